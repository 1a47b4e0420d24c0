"""`make gpu-check`: every CUDA path of the harness in one short run (under 10 minutes on one GPU).

Writes RESULTS_DIR/perf/gpu.md. The checks, each timed and recorded as ok / failed (a failure does not stop
the others; the command exits 1 if any failed; they run cheapest first and any not started within
`deadline_s` are skipped, so the run stays within its time):
1. loader: the device-resident CIFAR loader (CIFAR-10 when it is on disk, else a CIFAR-sized synthetic set);
2. train: seconds per CIFAR-10-sized epoch of resnet56 and resnet110, bf16 autocast, eager and torch.compile
   (compile time reported apart);
3. eval: fp32 vs bf16 evaluation of the same weights (top-1 difference, share of predictions that differ);
4. gated: DECORE's gated step against the plain step (median (IQR) over interleaved rounds);
5. torchrun: a collective probe on every GPU (nccl) and, with 2+ GPUs, a DECORE trial under torchrun;
6. latency: L1-pruned models against their FLOPs promise (eager and BatchNorm-folded) on the device;
7. sweep: a short sweep (a few trials) end to end through `python -m bench sweep`.

`reduced=True` (always on a CPU-only machine) runs the same code on tiny sizes and synthetic data, with
gloo instead of nccl and without torch.compile, so tests/test_gpucheck.py keeps it from rotting.
`python -m bench.checks.gpucheck --probe` is the torchrun worker of check 5.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.core.io import atomic_write

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class CheckConfig:
    device: torch.device
    reduced: bool
    models: tuple[str, ...]
    batch_size: int
    train_per_class: int              # synthetic fallback / reduced data, images per class
    test_per_class: int
    compile: bool
    warmup_steps: int
    gated_model: str
    gated_steps: int
    gated_rounds: int
    latency_model: str
    flops_targets: tuple[float, ...]
    latency_batch: int
    sweep_methods: str
    sweep_trials: int
    subprocess_timeout: int
    deadline_s: float                 # checks not started by then are skipped (the 10-minute promise)
    notes: list[str] = field(default_factory=list)


def check_config(device: torch.device, reduced: bool) -> CheckConfig:
    if reduced:
        return CheckConfig(device, True, ("resnet20",), 16, 6, 4, False, 1, "resnet20", 2, 2, "resnet20", (0.5,), 4,
                           "l1", 1, 300, 3600.0)    # DECORE already ran under torchrun
    return CheckConfig(device, False, ("resnet56", "resnet110"), 128, 5000, 1000, True, 20, "resnet56", 20, 5,
                       "resnet56", (0.7, 0.5, 0.3), 256, "decore,l1,random", 2, 180, 540.0)


# ---------------------------------------------------------------------------------------------- checks

def check_loader(cfg: CheckConfig, state: dict[str, Any]) -> tuple[str, list[str]]:
    from bench.engine.data import DeviceLoader, data_dir, load_dataset, make_synthetic

    if not cfg.reduced and (data_dir() / "cifar10" / "train.npz").is_file():
        data, what = load_dataset("cifar10"), "CIFAR-10"
    else:
        data = make_synthetic(train_per_class=cfg.train_per_class, test_per_class=cfg.test_per_class)
        what = "synthetic, CIFAR-10-sized" if not cfg.reduced else "synthetic, tiny"
        if not cfg.reduced:
            cfg.notes.append(f"CIFAR-10 is not in {data_dir()}: the CIFAR-10-sized synthetic set stands in "
                             "(epoch times hold; accuracies are of that set)")
    loader = DeviceLoader(data.train, data.mean, data.std, cfg.batch_size, cfg.device, train=True)
    state.update(data=data, what=what, train=loader,
                 test=DeviceLoader(data.test, data.mean, data.std, 500, cfg.device))
    _sync(cfg.device)
    t0 = time.perf_counter()
    for x, y in loader:
        assert x.device.type == cfg.device.type and x.is_contiguous(memory_format=torch.channels_last)
    _sync(cfg.device)
    s = time.perf_counter() - t0
    return (f"{what}: {len(data.train.y)} training images on {cfg.device}, one augmented epoch in {s:.2f} s "
            f"({len(loader) * cfg.batch_size / s:.0f} img/s)"), []


def _epoch(model_name: str, cfg: CheckConfig, state: dict[str, Any], compile: bool) -> dict[str, Any]:
    import models

    from bench.checks.timing import _Steps
    from bench.checks.perf import _recipe
    from bench.engine.train import Trainer, autocast_for, build_optimizer, ce_step, prepare_model

    torch.manual_seed(0)
    model = prepare_model(models.create(model_name, num_classes=10), cfg.device, compile=compile)
    trainer = Trainer(model, build_optimizer(model.parameters(), _recipe(cfg.batch_size)), None, cfg.device,
                      ce_step(torch.nn.CrossEntropyLoss()), autocast_for(cfg.device))
    t0 = time.perf_counter()
    trainer.train_epoch(_Steps(state["train"], cfg.warmup_steps), desc="warm-up")   # compiles here
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    stats = trainer.train_epoch(state["train"], desc=f"{model_name} epoch")           # reads from the device once
    seconds = time.perf_counter() - t0
    images = len(state["train"]) * cfg.batch_size
    return {"model": model_name, "compile": compile, "s per epoch": seconds, "img/s": images / seconds,
            "warm-up s (incl. compile)": warm, "train top-1 %": stats["top1"], "_model": model}


def check_train(cfg: CheckConfig, state: dict[str, Any]) -> tuple[str, list[str]]:
    rows = []
    for name in cfg.models:
        for compile in (False, True) if cfg.compile else (False,):
            r = _epoch(name, cfg, state, compile)
            if not compile and name == cfg.models[0]:
                state["trained"] = getattr(r["_model"], "_orig_mod", r["_model"])
            rows.append({k: v for k, v in r.items() if not k.startswith("_")})
    amp = "bf16 autocast" if cfg.device.type == "cuda" else "fp32 (CPU)"
    lines = [f"One epoch of {state['what']} ({len(state['train'])} steps of {cfg.batch_size}), {amp}, "
             "device-resident loader, after a warm-up.", "", _md(pd.DataFrame(rows))]
    if not cfg.compile:
        lines.append("\ntorch.compile: skipped in the reduced form (it takes minutes on a small CPU).")
    best = min(rows, key=lambda r: r["s per epoch"])
    return f"{len(rows)} epoch(s) timed; fastest {best['model']} compile={best['compile']}: {best['s per epoch']:.1f} s", lines


@torch.inference_mode()
def _predictions(model: torch.nn.Module, loader, device: torch.device, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from bench.engine.train import autocast_for

    model.eval()
    amp = autocast_for(device, bf16)
    preds, labels = [], []
    for x, y in loader:
        with amp():
            preds.append(model(x).float().argmax(1))
        labels.append(y)
    return torch.cat(preds), torch.cat(labels)


def check_eval(cfg: CheckConfig, state: dict[str, Any]) -> tuple[str, list[str]]:
    model = state["trained"]
    p32, y = _predictions(model, state["test"], cfg.device, False)
    p16, _ = _predictions(model, state["test"], cfg.device, True)
    top32, top16 = 100 * (p32 == y).float().mean().item(), 100 * (p16 == y).float().mean().item()
    differ = 100 * (p32 != p16).float().mean().item()
    return (f"{cfg.models[0]} after one epoch: top-1 fp32 {top32:.2f}%, bf16 {top16:.2f}% "
            f"(difference {top16 - top32:+.2f} points; {differ:.2f}% of predictions differ)"), []


def check_gated(cfg: CheckConfig, state: dict[str, Any]) -> tuple[str, list[str]]:
    import models
    from methods.core import channel_groups

    from bench.checks import perf, timing
    from bench.engine.train import prepare_model

    pcfg = timing.PerfConfig(batch_size=cfg.batch_size, device=cfg.device)
    base = models.create(cfg.gated_model, num_classes=10)
    plain = perf.plain_trainer(prepare_model(copy.deepcopy(base), cfg.device).train(), pcfg)
    gm = prepare_model(copy.deepcopy(base), cfg.device).train()
    groups = channel_groups(gm, torch.randn(1, 3, 32, 32, device=cfg.device), "all", name=models.resolve(cfg.gated_model))
    gated, gates = perf.gated_trainer(gm, groups, pcfg)
    for tr in (plain, gated):
        timing.harness_train(tr, state["train"], 2, cfg.batch_size)
    ratios = []
    for r in range(cfg.gated_rounds):
        order = [plain, gated] if r % 2 == 0 else [gated, plain]
        t = {id(tr): timing.harness_train(tr, state["train"], cfg.gated_steps, cfg.batch_size).seconds for tr in order}
        ratios.append(t[id(gated)] / t[id(plain)])
    gates.remove()
    s = timing.spread(ratios)
    return (f"{cfg.gated_model}: gated step / plain step {s.median:.3f} (IQR {s.iqr:.3f}) over {s.n} rounds of "
            f"{cfg.gated_steps} steps"), []


def _torchrun(nproc: int, args: list[str], cfg: CheckConfig, results: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "RESULTS_DIR": str(results), "WANDB_MODE": "disabled"}
    if cfg.device.type == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return _run(cmd, env, cfg.subprocess_timeout)


def _run(cmd: list[str], env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"`{' '.join(cmd[2:6])} ...` exited {r.returncode}: {' | '.join(tail)[:300]}")
    return r


TRIAL_ARGS = ["--model", "resnet20", "--dataset", "synthetic", "--method", "decore", "--knob", "lambda=0.01",
              "--knob", "agent_init=0.5", "--knob", "agent_lr=0.1", "--baseline-recipe", "test-micro",
              "--joint-recipe", "test-trial", "--finetune-recipe", "test-trial", "--label", "gpucheck"]


def check_torchrun(cfg: CheckConfig, state: dict[str, Any]) -> tuple[str, list[str]]:
    cuda = cfg.device.type == "cuda"
    nproc = torch.cuda.device_count() if cuda else 2
    backend = "nccl" if cuda else "gloo"
    r = _torchrun(nproc, ["-m", "bench.checks.gpucheck", "--probe", cfg.device.type], cfg, state["scratch"] / "results")
    probe = [line for line in r.stdout.splitlines() if line.startswith("probe")]
    lines = ["```", *probe]
    summary = f"{backend} all_reduce over {nproc} rank(s): {probe[0] if probe else '?'}"
    if nproc >= 2:
        r = _torchrun(nproc, ["-m", "bench", "run", *TRIAL_ARGS, "--device", cfg.device.type], cfg,
                      state["scratch"] / "results")
        last = [line for line in r.stdout.splitlines() if line.startswith("decore")]
        lines += last
        summary += f"; DECORE trial under torchrun ({nproc} ranks) finished"
    else:
        summary += "; one GPU: the DDP trial needs 2+ ranks, so only the nccl probe ran"
    return summary, lines + ["```"]


def probe(device_type: str) -> None:
    """torchrun worker: join the process group (nccl on CUDA, gloo on CPU) and all_reduce one tensor."""
    import torch.distributed as tdist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    x = torch.full((1024,), float(rank + 1), device=device)
    tdist.all_reduce(x)
    expected = world * (world + 1) / 2
    ok = bool(torch.all(x == expected))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"probe rank {rank}/{world} {tdist.get_backend()} on {name}: all_reduce {'ok' if ok else 'WRONG'} "
          f"({x[0].item():g}, expected {expected:g})", flush=True)
    tdist.destroy_process_group()
    if not ok:
        sys.exit(1)


def check_latency(cfg: CheckConfig, state: dict[str, Any]) -> tuple[str, list[str]]:
    from bench.checks import perf, perf_report, timing

    pcfg = timing.PerfConfig(batch_size=cfg.batch_size, device=cfg.device, flops_targets=cfg.flops_targets, round_to=(),
                           rounds=3, max_rounds=3 if cfg.reduced else 10, max_seconds=60,
                           latency_batch=cfg.latency_batch, latency_repeats=2 if cfg.reduced else 20,
                           throughput_repeats=2 if cfg.reduced else 5,
                           eval_images=64 if cfg.reduced else 2000, deploy=True)
    base, prof, plans = perf.make_plans(cfg.latency_model, pcfg)
    rounds, layout = perf.latency_section(cfg.latency_model, base, plans, prof["flops"], pcfg, lambda s: None)
    rows = perf.section_rows(cfg.latency_model, "latency", rounds, plans, prof, pcfg, layout)
    df = pd.DataFrame(rows)
    tables = [perf_report._pruned_table(df, form) for form in ("eager", "folded", "onnxruntime")]
    table = pd.concat([t.assign(form=t.get("form", "eager")) for t in tables if not t.empty], ignore_index=True)
    eff = df[(df.measure == "efficiency") & (df.batch == cfg.latency_batch)]
    return (f"{cfg.latency_model}: {len(plans)} L1 plans; efficiency at batch {cfg.latency_batch} "
            f"{eff.value.min():.2f}-{eff.value.max():.2f} of the FLOPs promise"), [perf_report._md(table)]


def check_sweep(cfg: CheckConfig, state: dict[str, Any]) -> tuple[str, list[str]]:
    results = state["scratch"] / "results"
    env = {**os.environ, "RESULTS_DIR": str(results), "WANDB_MODE": "disabled",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if cfg.device.type == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "bench", "sweep", "--model", "resnet20", "--dataset", "synthetic", "--profile", "test",
           "--methods", cfg.sweep_methods, "--trials", str(cfg.sweep_trials), "--device", cfg.device.type, "--wandb", "off"]
    _run(cmd, env, cfg.subprocess_timeout)
    csv = next(results.glob("*/runs.csv"))
    runs = pd.read_csv(csv)
    trials = runs[runs.row_type == "trial"]
    done = (trials.status == "complete").sum()
    cols = ["method", "knob_name", "knob_value", "top1_pct", "flops_reduction_pct", "status"]
    if done < len(cfg.sweep_methods.split(",")) * cfg.sweep_trials:
        raise RuntimeError(f"the sweep completed {done} trials of {len(cfg.sweep_methods.split(',')) * cfg.sweep_trials}")
    report = "report written" if (csv.parent / "README.md").is_file() else "report left to bench report (BENCH_SWEEP_REPORT=0)"
    return f"{done} trials complete ({cfg.sweep_methods}, {cfg.sweep_trials} each), runs.csv written, {report}", \
        [_md(trials[cols])]


# cheap checks first; the epochs (compile: minutes) last, so a slow compile cannot starve the others
CHECKS: dict[str, Callable[[CheckConfig, dict[str, Any]], tuple[str, list[str]]]] = {
    "loader": check_loader, "gated": check_gated, "torchrun": check_torchrun, "latency": check_latency,
    "sweep": check_sweep, "train": check_train, "eval": check_eval,
}
NEEDS = {"train": "loader", "eval": "train", "gated": "loader"}


# ---------------------------------------------------------------------------------------------- report

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _md(df: pd.DataFrame) -> str:
    from bench.checks.perf_report import _md as perf_md
    return perf_md(df)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def run_checks(cfg: CheckConfig, scratch: Path, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    state: dict[str, Any] = {"scratch": scratch}
    done: list[dict[str, Any]] = []
    start = time.perf_counter()
    for name, fn in CHECKS.items():
        need = NEEDS.get(name)
        why = f"needs {need}" if need and not any(d["check"] == need and d["status"] == "ok" for d in done) else None
        if why is None and time.perf_counter() - start > cfg.deadline_s:
            why = f"time budget: {cfg.deadline_s:.0f} s had passed"
        if why:
            done.append({"check": name, "status": "skipped", "result": why, "seconds": 0.0, "detail": []})
            continue
        t0 = time.perf_counter()
        try:
            summary, detail = fn(cfg, state)
            status = "ok"
        except Exception as e:  # one check's failure is a result, not the end of the run
            summary, detail, status = _one_line(e), ["```", traceback.format_exc()[-2000:], "```"], "failed"
        done.append({"check": name, "status": status, "result": summary, "seconds": time.perf_counter() - t0,
                     "detail": detail})
        log(f"gpu-check {name}: {status} ({done[-1]['seconds']:.0f} s) {summary}")
    return done


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} x {names[0]}, CUDA {torch.version.cuda}"
    from bench.core.env import cpu_model
    return f"no GPU: {cpu_model()}, {os.cpu_count()} CPUs (the reduced CPU form)"


def write(done: list[dict[str, Any]], cfg: CheckConfig, out: Path, seconds: float) -> Path:
    from bench.core.env import git_commit

    summary = pd.DataFrame([{k: d[k] for k in ("check", "status", "result", "seconds")} for d in done])
    text = ["# decore-bench GPU check", "",
            f"- device: {device_line(cfg.device)}; torch {torch.__version__}; commit {git_commit()}",
            f"- form: {'reduced (tiny sizes, synthetic data, gloo, no compile)' if cfg.reduced else 'full'}; "
            f"total {seconds:.0f} s; date {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
            *[f"- note: {n}" for n in cfg.notes], "", _md(summary), ""]
    for d in done:
        if d["detail"]:
            text += [f"## {d['check']}", "", *d["detail"], ""]
    return atomic_write(out / "gpu.md", lambda p: Path(p).write_text("\n".join(text)))


def run(device: torch.device, out: Path, reduced: bool = False, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """Run every check; returns gpu.md and whether all checks passed."""
    import tempfile

    cfg = check_config(device, reduced or device.type != "cuda")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpucheck-") as scratch:
        done = run_checks(cfg, Path(scratch), log)
    md = write(done, cfg, out, time.perf_counter() - t0)
    return md, all(d["status"] == "ok" for d in done)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        probe(sys.argv[2])
    else:
        sys.exit("usage: torchrun ... -m bench.checks.gpucheck --probe cuda|cpu (the worker of `python -m bench gpu-check`)")
