"""What a sweep will cost, before it runs: the images every phase trains and evaluates (`plan_images`), the
rates measured on this machine (`measure_rates`), the estimate and the profile `auto` picks from it
(`choose_profile`), the printed plan, and `sweep_config`, the SweepConfig of the command line's arguments."""
from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import methods
from bench.core.errors import UserError
from bench.core.io import scrub_url as scrub
from bench.engine.baseline import weights_source
from bench.engine.data import load_dataset, open_loaders
from bench.engine.imagefolder import image_folder_split_info, image_folder_train_images
from bench.engine.recipe import load_recipe
from bench.engine.train import prepare_model
from bench.trial.run import BREAK_EVEN_IMAGES

from .config import MATCH_METHODS_EXCLUDED, SweepConfig, _timm
from .profile import Profile, load_profile



def plan_images(cfg: SweepConfig, profile: Profile, trials: int | None, data: Any) -> dict[str, float]:
    """Training images the sweep will feed, per phase kind: baselines, and trials with matches and controls.
    `trials` per method (None: each method's own count from the profile, `Profile.trials_for`). Scratch-B's
    images scale with a pruned FLOPs fraction unknown before DECORE runs: planned at --scratch-at's point, else at
    half the FLOPs."""
    base_r = load_recipe(profile.baseline_for(_timm(cfg.model)))
    joint, ft = load_recipe(profile.joint_recipe), load_recipe(profile.finetune_recipe)
    n = {r.name: _images(cfg, data, r) for r in (base_r, joint, ft)}
    joint_images, ft_images = joint.epochs * n[joint.name], ft.epochs * n[ft.name]
    equal = joint_images + ft_images
    count = {m: profile.trials_for(m, trials) for m in cfg.methods}

    def images(m: str) -> float:
        if methods.get_method(m).trains:
            return joint_images * 1.1 + ft_images  # the gated step costs about 1.1 plain steps
        if cfg.budget == "equal":
            return equal
        r = load_recipe(profile.paper_finetune.get(m, profile.finetune_recipe))
        return r.epochs * _images(cfg, data, r)
    per_trial = {m: images(m) for m in cfg.methods}
    decore = count.get("decore", 0)
    partners = [m for m in cfg.methods if m not in MATCH_METHODS_EXCLUDED] if cfg.match == "decore" and "decore" in cfg.methods else []
    trained = not (cfg.pretrained or cfg.checkpoint)  # an imported baseline trains no image
    baseline_images = base_r.epochs * n[base_r.name]
    kept = 1.0 - (cfg.scratch_at if cfg.scratch_at is not None else 0.5)
    scratch_runs = (1 if cfg.scratch_at is not None else decore) if "decore" in cfg.methods else 0
    scratch = sum(baseline_images / kept if rule == "scratch-b" else baseline_images for rule in cfg.scratch) * scratch_runs
    extra = sum(per_trial[m] for m in partners) * decore + (equal if cfg.control else 0) + scratch
    # evaluation (forward passes): every trial reads the selection split before and after fine-tuning and the test
    # set once; every seed's baseline reads both once, and the break-even pass its training images
    n_trials = sum(count.values()) + len(partners) * decore + (1 if cfg.control else 0) + scratch_runs * len(cfg.scratch)
    info = _split_info(cfg, data)
    test = int(info.get("test_images") or 0)
    val = int(info.get("val_images") or 0) if cfg.selection != "test" else test
    # the break-even pass reads at most one epoch of the joint phase's loader, and only when a method searches it
    break_even = (min(BREAK_EVEN_IMAGES, n[joint.name])
                  if any(profile.methods[m].break_even_range is not None for m in cfg.methods) else 0)
    evals = (n_trials * (2 * val + test) + val + test + break_even) * cfg.seeds
    # trials that meet a FLOPs target by bisection: every matched partner, and methods whose knob is flops_target
    own = sum(count[m] for m in cfg.methods if m in profile.methods and profile.methods[m].knob == "flops_target")
    return {"baseline": baseline_images * cfg.seeds * trained,
            "trials": (sum(per_trial[m] * count[m] for m in cfg.methods) + extra) * cfg.seeds,
            "evals": evals, "n_trials": n_trials * cfg.seeds, "n_bisect": (len(partners) * decore + own) * cfg.seeds,
            "equal": equal, "joint": joint_images, "finetune": ft_images, **{f"n:{k}": v for k, v in n.items()}}


def estimate_seconds(imgs: dict[str, float], rates: Rates) -> float:
    """The plan's time estimate: training images at the measured training rate (the real loader and step),
    evaluation images at the measured evaluation rate, and every trial's measured fixed cost (tracing, counts,
    the FLOPs bisection of matched and flops_target trials, its latency pass). Not counted: the report at the end
    and process start-up (seconds)."""
    return (imgs["baseline"] * rates.train + imgs["trials"] * rates.trial_train + imgs["evals"] * rates.trial_eval
            + imgs["n_trials"] * rates.per_trial(False) + imgs["n_bisect"] * (rates.per_trial(True) - rates.per_trial(False)))


def trial_seconds(cfg: SweepConfig, profile: Profile, data: Any, rates: Rates) -> tuple[float, str]:
    """The plan's estimate of one trial (all its seeds) of the sweep's longest method, and that method: what one
    more trial adds to `estimate_seconds`, so a scheduler's time limit can be held against it."""
    def seconds(method: str, trials: int) -> float:
        one = dataclasses.replace(cfg, methods=(method,), match=None, control=False)
        return estimate_seconds(plan_images(one, profile, trials, data), rates)
    return max((seconds(m, 2) - seconds(m, 1), m) for m in cfg.methods)


AUTO_CPU_MINUTES = 35  # `--profile auto` on a CPU: the most thorough profile estimated under this


def choose_profile(cfg: SweepConfig, device: torch.device) -> tuple[str, int | None, str]:
    """`--profile auto`: `fast` on a GPU; on a CPU the most thorough of smoke < cpu < fast < paper whose
    estimate (from rates measured here, `measure_rates`) is under AUTO_CPU_MINUTES; when none is and no trial count
    was given, smoke with the most trials per method that fit (at least 1). Returns the profile, the trial count
    (None: the profile's or the user's) and the plan line that says which, why, and what the others would cost."""
    order = ("smoke", "cpu", "fast", "paper")
    if cfg.dataset.startswith("imagefolder:"):
        return "fast", cfg.trials, "profile auto -> fast (image folders: no CPU profile)"
    data = load_dataset(cfg.dataset, selection=cfg.selection)
    rates = measure_rates(cfg.model, data, load_recipe(load_profile("smoke").finetune_recipe), device)

    def minutes(name: str, trials: int | None = None) -> float:
        p = load_profile(name)
        c = dataclasses.replace(cfg, profile=name)
        return estimate_seconds(plan_images(c, p, trials or cfg.trials, data), rates) / 60
    est = {name: minutes(name) for name in order}
    trials = cfg.trials
    if device.type == "cuda":
        chosen, why = "fast", "a GPU is here"
    else:
        fits = [n for n in order if est[n] <= AUTO_CPU_MINUTES]
        chosen = fits[-1] if fits else "smoke"
        if fits:
            why = f"CPU only: the most thorough profile estimated under {AUTO_CPU_MINUTES} min"
        elif cfg.trials is None:
            fewer = [k for k in range(1, load_profile("smoke").trials) if minutes("smoke", k) <= AUTO_CPU_MINUTES]
            trials = fewer[-1] if fewer else 1
            why = (f"CPU only, and no profile fits {AUTO_CPU_MINUTES} min here at its trial count: smoke with {trials} "
                   f"trial(s) per method, ~{minutes('smoke', trials):.0f} min" +
                   ("" if fewer else f", the least there is; PROFILE=smoke TRIALS={trials} names it"))
        else:
            why = f"CPU only, and no profile fits {AUTO_CPU_MINUTES} min here with {cfg.trials} trials: the cheapest"
    others = ", ".join(f"{n} ~{est[n]:.0f} min" for n in order)
    return chosen, trials, (f"profile auto -> {chosen} ({why}; estimates here at {1 / rates.trial_train:.0f} img/s training, "
                            f"{1 / rates.trial_eval:.0f} evaluation, {rates.per_trial(False):.0f}-{rates.per_trial(True):.0f} s "
                            f"fixed per trial: {others})")


def print_plan(cfg: SweepConfig, profile: Profile, trials: int | None, device: torch.device, data: Any) -> None:
    base_r = load_recipe(profile.baseline_for(_timm(cfg.model)))
    joint, ft = load_recipe(profile.joint_recipe), load_recipe(profile.finetune_recipe)
    imgs = plan_images(cfg, profile, trials, data)
    n = {r.name: imgs[f"n:{r.name}"] for r in (base_r, joint, ft)}
    equal = imgs["equal"]
    t0 = time.perf_counter()
    rates = measure_rates(cfg.model, data, ft, device) if data is not None else None
    measuring = time.perf_counter() - t0
    total = estimate_seconds(imgs, rates) if rates is not None else float("nan")
    partners = [m for m in cfg.methods if m not in MATCH_METHODS_EXCLUDED] if cfg.match == "decore" and "decore" in cfg.methods else []
    info = _split_info(cfg, data)
    print(f"plan: {cfg.folder.name} on {device}, storage {scrub(cfg.storage_url)}")
    print(f"  data: {cfg.dataset} (fingerprint {info['fingerprint']}); selection split: " +
          (f"validation hold-out of {info.get('val_images', '?')} training images (seeded, class-balanced), "
           f"{info.get('train_images', '?')} train; decisions read validation top-1, test top-1/top-5 only reported"
           if cfg.selection == "val" else
           f"a seeded, class-balanced hold-out of the test side ({info.get('val_images', '?')} images; the imported weights "
           f"trained on every training image), {info.get('test_images', '?')} test images reported"
           if cfg.selection == "val-test" else "the test set (the papers' practice: every decision reads test accuracy)"))
    counts = {m: profile.trials_for(m, trials) for m in cfg.methods}
    each = (f"{next(iter(counts.values()))} trials each" if len(set(counts.values())) == 1 else
            "trials " + ", ".join(f"{m} {k}" for m, k in counts.items()))
    print(f"  studies: {', '.join(cfg.study_name(m) for m in cfg.methods)}; {each} x {cfg.seeds} seed(s)"
          f"{', ' + str(cfg.workers) + ' workers' if cfg.workers > 1 else ''}")
    fixed = {m: profile.methods[m].values for m in cfg.methods if profile.methods[m].values is not None}
    for m, values in fixed.items():
        print(f"  {m}: fixed {profile.methods[m].knob} values " + ", ".join(f"{v:g}" for v in values) +
              (" x the break-even lambda" if profile.methods[m].break_even_range is not None else ""))
    weights = weights_source(cfg.model, cfg.pretrained, cfg.checkpoint)
    if weights is None:
        print(f"  baseline: {base_r.epochs} epochs ({base_r.name}) on {n[base_r.name]} images, once per seed, cached")
    else:
        print("  baseline: imported, not trained: " + (f"timm's pretrained {weights.removeprefix('timm:')}"
              if cfg.pretrained else f"checkpoint {cfg.checkpoint} ({weights})") + "; measured once per seed, cached")
    if cfg.budget == "equal":
        print(f"  budget: equal, {equal:,} training images after the baseline for every method: DECORE's joint phase "
              f"{joint.epochs} x {n[joint.name]} ({joint.name}) + fine-tuning {ft.epochs} x {n[ft.name]} ({ft.name}); "
              f"methods without a training phase and the control train the joint share on the joint phase's loader "
              f"({joint.name}), then the same fine-tuning")
    else:
        own = {m: load_recipe(profile.paper_finetune.get(m, profile.finetune_recipe)).name for m in cfg.methods}
        print(f"  budget: paper budgets, unequal: DECORE joint {joint.epochs} ({joint.name}) + fine-tune {ft.epochs}; "
              + ", ".join(f"{m} fine-tunes with {r}" for m, r in own.items() if not methods.get_method(m).trains))
    print("  matching: " + (f"{', '.join(partners)} at every DECORE trial's FLOPs (within 1%, at or below it when possible; "
                             "DECORE's scope, slimming at its own)"
                             if partners else "off") +
          f"; no-pruning control: {'one per seed, same budget' if cfg.control else 'off'}; "
          + (f"{', '.join(cfg.scratch)} of " + ("each seed's DECORE trial nearest "
             f"{100 * cfg.scratch_at:g}% of the FLOPs removed; " if cfg.scratch_at is not None else "every DECORE trial; ")
             if cfg.scratch else "") +
          f"scope {cfg.scope or 'each method its default'}; round_to {cfg.round_to}")
    if math.isfinite(total):
        print(f"  estimate: about {total / 60:.0f} min if nothing is cached yet ({imgs['baseline']:,.0f} baseline "
              f"training images at {1 / rates.train:.0f} img/s, {imgs['trials']:,.0f} trial training images at "
              f"{1 / rates.trial_train:.0f} img/s, {imgs['evals']:,.0f} evaluation images at {1 / rates.trial_eval:.0f} img/s, {imgs['n_trials']:.0f} trials at {rates.per_trial(False):.0f} s fixed "
              f"({imgs['n_bisect']:.0f} matching FLOPs at {rates.per_trial(True):.0f} s); measured here, which took "
              f"{measuring:.0f} s before this line and is not in the estimate; cached baselines and finished trials cost nothing)")


def _images(cfg: SweepConfig, data: Any, recipe: Any) -> int:
    """Training images of one epoch of `recipe` (image folders: the training split, no subsets)."""
    if data is None:
        return image_folder_train_images(cfg.dataset.split(":", 1)[1], cfg.selection)
    return len(data.train.subset_per_class(recipe.subset_per_class).y)


def _split_info(cfg: SweepConfig, data: Any) -> dict[str, Any]:
    return data.split_info() if data is not None else image_folder_split_info(cfg.dataset, cfg.selection)


@dataclass(frozen=True)
class Rates:
    """What the plan's estimate multiplies, measured on this machine before anything trains (`measure_rates`).
    Seconds per image of the unpruned model and of a pruned copy (every group at 85% of its channels): on CPUs a
    pruned network at odd widths can train slower per image than the unpruned one (resnet110: 73 against 90 img/s),
    so trials are estimated at the slower of the two."""
    train: float          # seconds per training image: the real loader (augmentation), optimizer step and schedule
    eval: float           # seconds per evaluation image: evaluate() over an evaluation loader at its batch size
    trace: float          # seconds to trace the model's channel groups (once per trial)
    count: float          # seconds of one FLOPs/params count of a pruned copy (prune_model + fvcore)
    latency: float        # seconds of one latency measurement at batch 1 (bench.engine.measure.speedup at its round limit)
    train_pruned: float
    eval_pruned: float

    @property
    def trial_train(self) -> float:
        return max(self.train, self.train_pruned)

    @property
    def trial_eval(self) -> float:
        return max(self.eval, self.eval_pruned)

    def per_trial(self, bisects: bool) -> float:
        """A trial's seconds beyond its images: tracing, the final counts, its latency pass, and for a trial that
        meets a FLOPs target (flops_target knobs, matched partners) the bisection's counts."""
        return self.trace + 2 * self.count + self.latency + (BISECTION_COUNTS * self.count if bisects else 0.0)


BISECTION_COUNTS = 30  # FLOPs counts one flops_target trial makes (ScoredMethod._to_flops; measured: 31 on resnet110)
PRUNED_KEEP = 0.85     # the pruned copy measure_rates times: every group keeps this fraction of its channels


def _clock(fn: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _latency_pass(cpu: torch.nn.Module, x: torch.Tensor) -> float:
    """Seconds the measuring pass spends on one trial: a batch-1 forward on the latency pass's threads, scaled to
    its most rounds (two models, 10 calls a round, 3 warm-up rounds)."""
    import copy

    from bench.engine.measure import LATENCY_ROUNDS, LATENCY_THREADS

    threads = torch.get_num_threads()
    torch.set_num_threads(LATENCY_THREADS)
    try:
        with torch.inference_mode():
            xl = x.contiguous(memory_format=torch.channels_last)
            cl = copy.deepcopy(cpu).to(memory_format=torch.channels_last)
            cl(xl)
            call = min(_clock(lambda: cl(xl), torch.device("cpu")) for _ in range(5))
    finally:
        torch.set_num_threads(threads)
    return call * 2 * 10 * (3 + LATENCY_ROUNDS[1])


def measure_rates(model_name: str, data: Any, recipe: Any, device: torch.device, batches: int = 6) -> Rates:
    """Measure `Rates` here (cached per model, data, recipe and device): for the unpruned model and a pruned copy,
    `batches` training batches of the real loader through `fit` after one warm-up batch and two evaluation batches
    of `evaluate`; one trace, one count (after a first, warm-up count), and one batch-1 forward pass on one thread
    scaled to the latency pass's most rounds."""
    key = (model_name, str(data.fingerprint), recipe.name, str(device))
    if key in _RATES:
        return _RATES[key]
    import copy

    import models
    from bench.engine.data import DeviceLoader
    from bench.engine.measure import profile_model
    from bench.engine.train import evaluate, fit
    from methods.core import channel_groups, prune_model

    loader = open_loaders(data.name, recipe.batch_size, device, data=data, subset_per_class=100).train
    bs = recipe.batch_size
    split = data.selection_split.subset_per_class(max(1, 1000 // data.num_classes))  # timed only, never scored
    evals = DeviceLoader(split, data.mean, data.std, max(bs, 500), device)

    def clock(fn: Callable[[], Any]) -> float:
        return _clock(fn, device)

    def speeds(net: torch.nn.Module) -> tuple[float, float]:
        model = prepare_model(net, device)
        fit(model, loader, None, recipe, device, images=bs)  # warm-up
        train = clock(lambda: fit(model, loader, None, recipe, device, images=batches * bs)) / (batches * bs)
        evaluate(model, evals, device)  # warm-up
        return train, clock(lambda: evaluate(model, evals, device)) / len(split.y)

    cpu = models.create(model_name, num_classes=data.num_classes).eval()
    x = torch.randn(1, 3, *data.train.x.shape[1:3])
    t0 = time.perf_counter()
    groups = channel_groups(cpu, x, "all", name=model_name)
    trace = time.perf_counter() - t0
    ctx = methods.Context(cpu, groups, model_name, {"num_classes": data.num_classes}, tuple(x.shape[1:]),
                          torch.device("cpu"), 0)
    plan = ctx.plan({})
    profile_model(prune_model(cpu, plan), tuple(x.shape[1:]))  # warm-up: the first count pays fvcore's set-up
    count = clock(lambda: profile_model(prune_model(cpu, plan), tuple(x.shape[1:])))
    masks = {g.id: (torch.arange(g.units) < max(1, round(g.units * PRUNED_KEEP))).float() for g in groups}
    pruned = prune_model(cpu, ctx.plan(masks))
    latency = _latency_pass(cpu, x)
    train, evaluation = speeds(copy.deepcopy(cpu))
    train_pruned, eval_pruned = speeds(pruned)
    _RATES[key] = rates = Rates(train, evaluation, trace, count, latency, train_pruned, eval_pruned)
    return rates


_RATES: dict[tuple[str, ...], Rates] = {}


def sweep_config(args: argparse.Namespace):
    """The SweepConfig of `sweep`'s arguments (also `launch`'s), --profile auto resolved on this machine."""
    profile = args.profile
    if profile == "auto":

        from bench.engine.train import resolve_device

        probe = SweepConfig(args.model, args.dataset, "smoke", tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                            args.trials, args.seeds, selection=args.selection, budget=args.budget)
        profile, args.trials, line = choose_profile(probe, resolve_device(args.device))
        print(line)
    round_to, alignment = _round_to(args)
    cfg = SweepConfig(args.model, args.dataset, profile, tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                      args.trials, args.seeds, args.storage, args.workers, args.device, args.scope,
                      None if args.match == "none" else args.match, round_to, args.wandb, compile=args.compile,
                      alignment=alignment, deploy_form=args.deploy_form,
                      budget=args.budget, selection=args.selection, **_controls(args.control),
                      scratch_at=getattr(args, "scratch_at", None),
                      pretrained=args.pretrained, checkpoint=args.checkpoint,
                      **({"report": False} if getattr(args, "no_report", False) else {}))
    return cfg


def _round_to(args: argparse.Namespace) -> tuple[int, dict | None]:
    """--round-to as a number, `auto` resolved by measurement (bench.deploy.align; its record reused from RESULTS_DIR/align/)."""
    if str(args.round_to) == "auto":
        from bench.deploy import align
        from bench.engine.train import resolve_device

        record = align.auto(args.model, resolve_device(args.device), args.deploy_form)
        print(record.line())
        return record.chosen, dataclasses.asdict(record)
    try:
        value = int(args.round_to)
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"--round-to {args.round_to!r} is not a whole number of at least 1 nor auto: use e.g. 8, or auto")
    return value, None


def _controls(text: str) -> dict[str, Any]:
    names = {c.strip() for c in text.split(",") if c.strip()}
    unknown = names - {"keep", "scratch-b", "scratch-e", "none"}
    if unknown or not names or ("none" in names and len(names) > 1):
        raise UserError(f"--control {text!r} is not a list of keep, scratch-b, scratch-e (or none): "
                        "e.g. --control keep,scratch-b,scratch-e")
    return {"control": "keep" in names, "scratch": tuple(sorted(names & {"scratch-b", "scratch-e"}))}
