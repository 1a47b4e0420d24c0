"""The training engine: one train-epoch and one evaluate function, optimiser and schedule from a Recipe.

Hot-loop rules (airbench, nanoGPT): autocast and compile are chosen once, outside the loop; the step
never syncs with the host (loss and correct counts accumulate on the device, read once per epoch).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from bench.engine import dist
from bench.core.errors import UserError
from bench.engine.recipe import Recipe

# `python -m bench run` sets this when stderr is not a terminal: tqdm's bars are silent there, so without a line
# per phase and epoch a log would show nothing for minutes (issue 30)
PROGRESS_LINES = False


def progress(message: str) -> None:
    """One progress line on stderr, only when PROGRESS_LINES is set (and on rank 0 under torchrun)."""
    if PROGRESS_LINES and dist.is_main():
        print(message, file=sys.stderr, flush=True)


class Diverged(RuntimeError):
    """Training produced a non-finite loss: the trial is recorded as failed, the sweep goes on."""


# step(model, x, y) -> (loss, logits). DECORE swaps in its gated step; the default is plain cross-entropy.
StepFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available here: use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is not a torch device: use auto, cpu, cuda or cuda:N") from None


def autocast_for(device: torch.device, bf16: bool | None = None) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast: on by default on CUDA, off on CPU (bf16 on most CPUs is slower, not faster).

    `bf16=True` forces it on any device (the CPU path is what the tests exercise); `False` turns it off.
    """
    if bf16 is None:
        bf16 = device.type == "cuda"
    if bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def prepare_model(model: nn.Module, device: torch.device, channels_last: bool = True,
                  compile: bool = False) -> nn.Module:
    """Move to the device and memory format once; compile last (the returned module may be a wrapper)."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return compiled(model) if compile else model


def compiled(module: nn.Module) -> nn.Module:
    """torch.compile(module), with Dynamo guarding on module hooks.

    By default Dynamo does not guard on nn.Module hooks (`torch._dynamo.config.skip_nnmodule_hook_guards`), so a
    model compiled after another instance of its class reuses that graph whatever hooks either has: a gated
    DECORE model (its gates are forward hooks) compiled after an ungated model of the same architecture in
    the same process (a no-pruning control, slimming's sparsity phase, a baseline) would silently train
    ungated. With the guard, models with and without hooks get their own graphs, and models with the same
    hooks still share one (tests/test_train.py checks both).
    """
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    return torch.compile(module)


def build_optimizer(params: Iterable[nn.Parameter], recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, nesterov=recipe.nesterov and recipe.momentum > 0,
                           weight_decay=recipe.weight_decay)


def lr_factor(recipe: Recipe, epoch: float, total: float | None = None) -> float:
    """Multiplier of recipe.lr at a (fractional) epoch: linear warm-up, then the schedule.

    `total` stretches the schedule's shape to another length (an image budget): cosine spans `total` epochs and
    multistep milestones move in proportion; warm-up keeps its length."""
    total = recipe.epochs if total is None else total
    if recipe.warmup_epochs and epoch < recipe.warmup_epochs:
        return (epoch + 1e-9) / recipe.warmup_epochs
    if recipe.schedule == "cosine":
        span = max(total - recipe.warmup_epochs, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min((epoch - recipe.warmup_epochs) / span, 1.0)))
    if recipe.schedule == "multistep":
        return recipe.gamma ** sum(epoch >= m * total / recipe.epochs for m in recipe.milestones)
    return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int,
                    total_epochs: float | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(recipe, step / steps_per_epoch, total_epochs))


def ce_step(loss_fn: nn.Module) -> StepFn:
    def step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return loss_fn(logits, y), logits
    return step


@dataclass
class Trainer:
    """Everything the loop needs, decided once: model, optimiser, schedule, autocast, step function."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    device: torch.device
    step: StepFn
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    after_step: list[Callable[[], None]] = field(default_factory=list)

    def train_epoch(self, loader: Iterable, desc: str = "train", limit: int | None = None) -> dict[str, float]:
        """One pass over `loader` (or its first `limit` images, counted on this rank); returns mean loss, top-1 (%)
        and the images trained on (all ranks), read from the device once."""
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for x, y in tqdm(loader, desc=desc, leave=False, disable=None if dist.is_main() else True, dynamic_ncols=True):
            if limit is not None:
                if seen >= limit:
                    break
                x, y = x[: limit - seen], y[: limit - seen]
            with self.autocast():
                loss, logits = self.step(self.model, x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for hook in self.after_step:
                hook()
            if self.scheduler is not None:
                self.scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
        totals = torch.stack([loss_sum.double(), correct.double(), loss_sum.new_tensor(seen, dtype=torch.float64)])
        dist.all_reduce_(totals)  # every rank reports (and checks for divergence) the same global numbers
        loss_sum, correct, seen = totals.tolist()
        images = int(seen)
        seen = max(seen, 1)
        return {"loss": loss_sum / seen, "top1": 100.0 * correct / seen, "images": images}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
             desc: str = "eval") -> dict[str, float]:
    """Mean cross-entropy, top-1 and top-5 (%) over `loader`, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros(2, device=device, dtype=torch.long)
    seen = 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=None if dist.is_main() else True, dynamic_ncols=True):
        with autocast():
            logits = model(x)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += topk_correct(logits, y, (1, 5))
        seen += len(y)
    model.train(was_training)
    totals = torch.cat([loss_sum.view(1).double(), correct.double(), loss_sum.new_tensor([seen], dtype=torch.float64)])
    dist.all_reduce_(totals)  # under torchrun each rank evaluated its slice of the test set
    loss, top1, top5, seen = totals.tolist()
    seen = max(seen, 1)
    return {"loss": loss / seen, "top1": 100.0 * top1 / seen, "top5": 100.0 * top5 / seen}


def topk_correct(logits: torch.Tensor, y: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> torch.Tensor:
    """Number of samples whose label is among the top-k logits, for each k (a device tensor)."""
    k_max = min(max(ks), logits.shape[1])
    hits = logits.topk(k_max, dim=1).indices.eq(y[:, None])
    return torch.stack([hits[:, : min(k, k_max)].any(1).sum() for k in ks])


def fit(model: nn.Module, train_loader: Iterable, test_loader: Iterable | None, recipe: Recipe,
        device: torch.device, *, step: StepFn | None = None, after_step: Iterable[Callable[[], None]] = (),
        on_epoch: Callable[[dict[str, Any]], None] | None = None, desc: str = "", compile: bool = False,
        bf16: bool | None = None, images: int | None = None) -> list[dict[str, Any]]:
    """Train `model` (already prepared) for recipe.epochs; evaluate after each epoch when given an evaluation loader
    (`test_loader`: the selection split for every caller that decides on it; rows `val_loss/top1/top5`).

    `images` replaces the epochs by an image budget (the protocol's equal budget): training stops after exactly
    that many images (the last epoch partial, its last batch cut), on the recipe's schedule stretched to that length.
    Each epoch's row counts the images it trained on (`train_images`, all ranks together).

    `step` replaces the plain cross-entropy step (DECORE's gated step); `after_step` hooks run after
    every optimiser step (DECORE's agent update). `on_epoch(row)` may add entries to the epoch's row.
    `compile` trains through `torch.compile(model)`: the parameters (and any gate hooks) stay those of
    `model`, and Dynamo's cache serves every later model of the same architecture in this process
    without recompiling (trials of one sweep worker; tests/test_train.py checks it). `bf16`: see autocast_for.
    Returns one dict per epoch (epoch, lr, train loss/top1, val loss/top1/top5, images and seconds of training).
    Under torchrun the model trains wrapped in DistributedDataParallel; `model` itself stays unwrapped.
    """
    steps = len(train_loader)  # type: ignore[arg-type]
    if steps == 0:
        raise UserError(f"{desc.strip() or 'training'}: the training split has fewer images than one batch of "
                        f"{recipe.batch_size}: use a smaller batch_size in recipe {recipe.name!r} or more data")
    per_epoch = steps * recipe.batch_size  # images of one epoch (drop_last), all ranks together
    total = recipe.epochs if images is None else images / per_epoch
    optimizer = build_optimizer(model.parameters(), recipe)
    amp = autocast_for(device, bf16)
    runner = dist.wrap(model, device)
    runner = compiled(runner) if compile else runner
    trainer = Trainer(runner, optimizer, build_scheduler(optimizer, recipe, steps, total), device,
                      step or ce_step(nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)), amp,
                      list(after_step))
    history = []
    done = 0
    for epoch in range(math.ceil(total)):
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "final": epoch + 1 == math.ceil(total)}
        limit = None if images is None else -(-(images - done) // dist.world_size())
        stats = trainer.train_epoch(train_loader, f"{desc}epoch {epoch + 1}", limit)
        done += stats.pop("images")
        row.update({f"train_{k}": v for k, v in stats.items()})
        row["train_images"] = done - sum(r["train_images"] for r in history)
        row["train_seconds"] = time.perf_counter() - t0
        dist.sync_buffers(model)  # rank 0's BatchNorm statistics everywhere: one model to evaluate, prune, save
        if not math.isfinite(row["train_loss"]):
            raise Diverged(f"{desc.strip() or 'training'}: loss became {row['train_loss']} in epoch {epoch + 1}")
        if test_loader is not None:
            row.update({f"val_{k}": v for k, v in evaluate(model, test_loader, device, amp).items()})
        history.append(row)
        progress(f"{desc}epoch {epoch + 1}/{math.ceil(total)}: train loss {row['train_loss']:.3f}, top-1 "
                 f"{row['train_top1']:.2f}%" + (f", validation top-1 {row['val_top1']:.2f}%" if 'val_top1' in row else "")
                 + f" ({row['train_seconds']:.0f}s)")
        if on_epoch is not None:
            on_epoch(row)
    return history
