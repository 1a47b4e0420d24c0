"""Many processes (torchrun): process group set-up, rank helpers, collective reductions, DDP wrapping.

`torchrun --nproc_per_node=N -m bench run ...` starts N copies of the command with RANK, WORLD_SIZE and
LOCAL_RANK (and the rendezvous address) in the environment; `setup()` joins them into one process group
(nccl for CUDA devices, gloo on CPU) and gives each rank its own GPU. Without those variables every
helper here is a no-op, so one process runs exactly the code it always ran.

What is reduced across ranks, and why:
- training: DDP averages the network's gradients; the epoch's loss and accuracy are summed over ranks
  (so a diverged loss stops every rank, not one);
- evaluation: each rank evaluates its slice of the test set; loss sums and correct counts are summed;
- DECORE: the agents' gradients are averaged (identical agents on every rank), its statistics summed;
- decisions (the keep plan) are checked equal on every rank; only rank 0 writes files.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as tdist
import torch.nn as nn

from bench.core.errors import UserError


def launched() -> bool:
    """True when torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def rank() -> int:
    return tdist.get_rank() if active() else 0


def world_size() -> int:
    return tdist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints results."""
    return rank() == 0


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once) and return this rank's device; a no-op in one process.

    The backend follows the device: nccl for CUDA, gloo for CPU. An unindexed CUDA device becomes
    cuda:LOCAL_RANK, so N ranks on one machine use N GPUs.
    """
    if not launched():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if device.index is None:
            if local >= torch.cuda.device_count():
                raise UserError(f"torchrun started local rank {local} but only {torch.cuda.device_count()} GPUs are "
                                "visible: lower --nproc_per_node")
            device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                 device_id=device if device.type == "cuda" else None)
    return device


def teardown() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def all_reduce_(tensors: Sequence[torch.Tensor | None], op: str = "sum") -> None:
    """Sum (or average, op="mean") tensors in place across ranks, as one flat collective; a no-op in one process.

    Every rank holds bitwise the same result afterwards (the collective returns one reduced buffer to all).
    """
    if not active():
        return
    live = [t for t in tensors if t is not None]
    if not live:
        return
    flat = torch.cat([t.detach().reshape(-1).to(live[0].dtype) for t in live])
    tdist.all_reduce(flat)
    if op == "mean":
        flat /= world_size()
    elif op != "sum":
        raise ValueError(f"unknown reduction {op!r}: use sum or mean")
    offset = 0
    for t in live:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def all_true(flag: bool) -> bool:
    """True when `flag` holds on every rank (a collective: every rank must call it)."""
    if not active():
        return flag
    t = torch.tensor([int(bool(flag))], device=_collective_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled); other ranks' argument is ignored."""
    if not active():
        return obj
    box = [obj if is_main() else None]
    tdist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def check_same(obj: Any, what: str) -> None:
    """Raise when `obj` differs between ranks: decisions (keep plans) must not depend on the rank."""
    if not active():
        return
    blob = pickle.dumps(obj)
    got: list[Any] = [None] * world_size()
    tdist.all_gather_object(got, blob)
    differ = [r for r, b in enumerate(got) if b != got[0]]
    if differ:
        raise RuntimeError(f"{what} differs between rank 0 and rank(s) {differ}: a rank-dependent decision is a bug")


def barrier() -> None:
    if active():
        tdist.barrier()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in DistributedDataParallel for training, or `model` itself in one process.

    DDP keeps its defaults: parameters and buffers are broadcast from rank 0 at construction, and
    broadcast_buffers=True re-broadcasts rank 0's BatchNorm running statistics before every forward
    (batch statistics stay per rank: each normalises over its own batch_size / N images).
    SyncBatchNorm is not used: it replaces the BatchNorm modules that DECORE's gates hook onto.
    """
    if not active():
        return model
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so that evaluation, pruning
    and saving see one model: after DDP's last forward each rank's statistics moved on its own batch."""
    if not active():
        return
    for buf in model.buffers():
        tdist.broadcast(buf.data, src=0)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if tdist.get_backend() == "nccl" else torch.device("cpu")
