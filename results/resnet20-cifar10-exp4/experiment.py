"""Issue 4 experiment: resnet20 on CIFAR-10, DECORE (paper defaults) at 3 lambdas below break-even, L1/random at equal FLOPs."""
import json, sys, time, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))
from bench.baseline import get_baseline
from bench.data import load_dataset
from bench.recipe import load_recipe
from bench.trial import TrialConfig, run_trial, train_accuracy
from methods.decore import break_even_lambda
dev = torch.device("cpu")
data = load_dataset("cifar10")
base = get_baseline("resnet20", "cifar10", load_recipe("cpu-tiny"), data=data, device=dev)
acc = train_accuracy(base.model, data, load_recipe("cpu-joint"), dev)
be = break_even_lambda(acc)
print(f"baseline top1 {base.meta['test']['top1']:.2f} train acc (full train set) {acc:.4f} break-even lambda {be:.3f}", flush=True)
common = dict(model="resnet20", dataset="cifar10", baseline_recipe="cpu-tiny", joint_recipe="cpu-joint",
              finetune_recipe="cpu-tiny-finetune", scope="all", profile="exp4")
keys = ("method", "knobs", "top1_pct", "top1_before_finetune_pct", "flops_reduction_pct", "params_reduction_pct", "wall_seconds")
for div in (3, 6, 12):
    lam = round(be / div, 4)
    r = run_trial(TrialConfig(method="decore", knobs={"lambda": lam}, **common), dev, data=data)
    print(json.dumps({k: r[k] for k in keys}), flush=True)
    frac = r["flops"] / r["base_flops"]
    for m in ("l1", "random"):
        r2 = run_trial(TrialConfig(method=m, knobs={"flops_target": round(frac, 4)}, **common), dev, data=data)
        print(json.dumps({k: r2[k] for k in keys}), flush=True)
