"""Many processes: torchrun with DistributedDataParallel on CPU (gloo), two ranks.

- the loader's shards: the ranks' batches together are the one-process batch, equal batch counts;
- one torchrun launch of tests/ddp_worker.py on two ranks: the collectives (DECORE's averaged agent
  gradient equals the one-process gradient on the concatenated samples, sharded evaluation equals
  evaluating everything, a keep plan that differs between ranks is refused), then `bench run` of DECORE
  on the synthetic set: identical networks, agents and plans on both ranks, one result written by rank 0.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddp_worker
from bench.engine.data import ArraySplit, DeviceLoader, make_synthetic
from bench.engine.measure import count_flops
from bench.deploy.pruned import load_pruned
from bench.engine.train import evaluate, prepare_model

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


# ---------------------------------------------------------------- sharding

def _split(synthetic, n: int) -> ArraySplit:
    return ArraySplit(synthetic.train.x[:n], synthetic.train.y[:n])


@pytest.mark.parametrize("n", [200, 203])
def test_ranks_batches_together_are_the_one_process_batch(synthetic, n):
    split = _split(synthetic, n)
    kw = dict(mean=synthetic.mean, std=synthetic.std, train=True, pad=0, flip=False, seed=3)  # no augmentation
    one = DeviceLoader(split, batch_size=32, **kw)
    ranks = [DeviceLoader(split, batch_size=16, rank=r, world=2, **kw) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == n // 32
    for _ in range(2):  # two epochs: the permutation moves on the same way on every rank
        for (x, y), (x0, y0), (x1, y1) in zip(one, *ranks):
            assert torch.equal(x, torch.cat([x0, x1])) and torch.equal(y, torch.cat([y0, y1]))


def test_evaluation_shards_cover_the_test_set_once(synthetic):
    split = _split(synthetic, 203)
    shards = [DeviceLoader(split, synthetic.mean, synthetic.std, 50, rank=r, world=2) for r in range(2)]
    labels = torch.cat([y for loader in shards for _, y in loader])
    assert torch.equal(labels, torch.from_numpy(split.y))


def test_augmentation_differs_between_ranks(synthetic):
    """200 copies of one image: any difference between the ranks' batches comes from crops and flips."""
    split = ArraySplit(synthetic.train.x[:1].repeat(200, 0), synthetic.train.y[:1].repeat(200, 0))
    x0, x1 = (next(iter(DeviceLoader(split, synthetic.mean, synthetic.std, 50, train=True, rank=r, world=2, seed=1)))[0]
              for r in range(2))
    assert x0.shape == x1.shape and not torch.equal(x0, x1)


# ---------------------------------------------------------------- torchrun: two gloo ranks, one launch

ARGS = ["run", "--model", "resnet20", "--dataset", "synthetic", "--method", "decore", "--device", "cpu",
        "--knob", "lambda=0.01", "--knob", "agent_init=0.5", "--knob", "agent_lr=0.1",
        "--baseline-recipe", "test-micro", "--joint-recipe", "test-micro", "--finetune-recipe", "test-micro"]


# the tests of the one launch run on one pytest-xdist worker: a module fixture is built once per worker process
ONE_LAUNCH = pytest.mark.xdist_group("ddp-launch")


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """`torchrun --nproc_per_node=2 tests/ddp_worker.py`: the collective checks, then a DECORE trial."""
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RESULTS_DIR": str(out / "results"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_worker.py"), str(out), *ARGS]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return out, r.stdout


def _checks(out: Path) -> list[dict]:
    return [torch.load(out / f"checks{k}.pt", weights_only=True) for k in range(2)]


@pytest.mark.slow
@ONE_LAUNCH
def test_averaged_agent_gradient_equals_the_full_batch_gradient(launch):
    """The agent loss is a mean over samples: the mean over ranks of per-rank means over B = the mean over 2B."""
    weights, actions, correct = ddp_worker.samples()
    full = ddp_worker.agent_grads(weights, actions, correct)
    ranks = _checks(launch[0])
    for got in (r["grads"] for r in ranks):
        for g, want in zip(got, full):
            assert torch.allclose(g, want, rtol=1e-5, atol=1e-7)
    for g0, g1 in zip(ranks[0]["grads"], ranks[1]["grads"]):
        assert torch.equal(g0, g1)  # bitwise: the ranks' Adam steps stay identical
    # one rank's half alone is not the full gradient: the reduction is what makes it equal
    B = ddp_worker.B
    half = ddp_worker.agent_grads(weights, [a[:B] for a in actions], correct[:B])
    assert not all(torch.allclose(h, f, rtol=1e-5, atol=1e-7) for h, f in zip(half, full))


@pytest.mark.slow
@ONE_LAUNCH
def test_sharded_evaluation_equals_evaluating_everything(launch):
    split, mean, std = ddp_worker.eval_split()
    want = evaluate(ddp_worker.small_net(), DeviceLoader(split, mean, std, 40, channels_last=False), CPU)
    for r in _checks(launch[0]):
        assert r["metrics"]["top1"] == want["top1"] and r["metrics"]["top5"] == want["top5"]
        assert r["metrics"]["loss"] == pytest.approx(want["loss"], rel=1e-5)


@pytest.mark.slow
@ONE_LAUNCH
def test_rank_dependent_plan_is_refused(launch):
    for r in _checks(launch[0]):
        assert "differs between rank 0 and rank(s) [1]" in r["refused"]
        assert r["all_true"] == [True, False]


@pytest.mark.slow
@ONE_LAUNCH
def test_torchrun_decore_trial(launch):
    """Both ranks train the same network and agents and select the same plan; rank 0 alone writes one result."""
    out, stdout = launch
    assert stdout.count("decore {") == 1  # rank 0 alone prints the result line
    r0, r1 = (json.loads((out / f"rank{k}.json").read_text()) for k in range(2))
    assert r0["keep_prob"] == r1["keep_prob"] and r0["plan"] == r1["plan"]
    assert len(r0["weights"]) == 3 and r0["weights"] == r1["weights"]  # after baseline, joint phase, fine-tune
    assert r0["writes"] and not r1["writes"]

    [result_file] = (out / "results").glob("*/trials/*/result.json")
    assert len(list((out / "results").glob("baselines/*/meta.json"))) == 1
    row = json.loads(result_file.read_text())
    assert row["world_size"] == 2 and row["status"] == "complete"
    assert any(k < n for k, n, *_ in json.loads(row["kept_channels"]).values())  # the agents removed something

    plan, model = load_pruned(result_file.parent)
    assert plan.to_json() == r0["plan"] and count_flops(model, (3, 32, 32)) == row["flops"]
    data = make_synthetic()
    top1 = evaluate(prepare_model(model, CPU).eval(), DeviceLoader(data.test, data.mean, data.std, 500), CPU)["top1"]
    assert top1 == pytest.approx(row["top1_pct"], abs=0.51)  # within one test image of 200 (batching differs)
