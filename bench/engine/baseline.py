"""Cached baselines: train the unpruned model once per (model, dataset, recipe, seed, subset), or import it from
weights: a user's state_dict (`checkpoint`) or timm's pretrained weights (`pretrained`, downloaded once).

RESULTS_DIR/baselines/<model>-<dataset>-<hash>/ holds model.pt (a state_dict) and meta.json (the spec,
the metrics, the sha256 of model.pt). A second request returns from the cache; an entry whose file is
missing or whose hash does not match is reported and rebuilt. The folder appears atomically.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn

import models

from bench.engine import dist
from bench.engine.data import ArrayDataset, data_fingerprint, load_dataset, open_loaders
from bench.engine.splits import check_selection
from bench.engine.imagefolder import image_folder_classes, image_folder_train_images
from bench.core.env import environment
from bench.core.errors import UserError
from bench.core.faults import crash_point
from bench.core.io import results_dir, config_hash, load_state_dict, read_json, save_state_dict, sha256_file, sha256_file_cached, write_json
from bench.engine.measure import count_flops, count_params
from bench.engine.recipe import Recipe
from bench.engine.tracking import check_reachable
from bench.engine.train import autocast_for, evaluate, fit, prepare_model

log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # 2: the selection split and the data's content fingerprint are part of the key


@dataclass(frozen=True)
class BaselineSpec:
    """Everything that changes the baseline's weights; its hash is the cache key."""
    model: str            # resolved timm name
    dataset: str
    recipe: Recipe
    seed: int = 0
    subset_per_class: int | None = None
    checkpoint_sha256: str | None = None  # set when the user brings weights
    selection: str = "val"                # trained without the validation hold-out ("test": on every image)
    data_fingerprint: str = ""            # content hash of the data actually loaded
    pretrained: str | None = None         # timm's weights it starts from (<architecture>.<tag>), with --pretrained

    def to_dict(self) -> dict[str, Any]:
        d = {"format": FORMAT_VERSION, "model": self.model, "dataset": self.dataset, "recipe": self.recipe.to_dict(),
             "seed": self.seed, "subset_per_class": self.subset_per_class, "checkpoint_sha256": self.checkpoint_sha256,
             "selection": self.selection, "data_fingerprint": self.data_fingerprint}
        if self.pretrained is not None:  # absent otherwise, so baselines cached before the field keep their keys
            d["pretrained"] = self.pretrained
        return d

    @property
    def key(self) -> str:
        short = self.model.removeprefix("cifar_")
        return f"{short}-{self.dataset.replace(':', '_').replace('/', '_')}-{config_hash(self.to_dict())}"


@dataclass
class Baseline:
    spec: BaselineSpec
    path: Path
    model: nn.Module          # on CPU, eval mode
    meta: dict[str, Any]
    cached: bool


def _load_cached(spec: BaselineSpec, folder: Path) -> Baseline | None:
    """The cached baseline, or None when absent; a broken entry is reported and removed."""
    if not folder.exists():
        return None
    try:
        meta = read_json(folder / "meta.json")
        weights = folder / "model.pt"
        if not weights.is_file() or sha256_file(weights) != meta.get("sha256"):
            raise UserError("model.pt is missing or its sha256 does not match meta.json")
        model = models.create(spec.model, num_classes=int(meta["num_classes"]))
        model.load_state_dict(load_state_dict(weights))
    except (UserError, RuntimeError, KeyError) as e:
        log.warning("baseline cache entry %s is corrupt (%s); rebuilding it", folder, str(e).splitlines()[0])
        if dist.is_main():
            shutil.rmtree(folder, ignore_errors=True)
        return None
    return Baseline(spec, folder, model.eval(), meta, cached=True)


def _store(spec: BaselineSpec, folder: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write model.pt and meta.json into a temporary folder, then rename it into place."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_state_dict(tmp / "model.pt", {k: v.detach().cpu() for k, v in model.state_dict().items()})
    meta["sha256"] = sha256_file(tmp / "model.pt")
    write_json(tmp / "meta.json", meta)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def load_user_checkpoint(model: nn.Module, path: str | Path, model_name: str) -> None:
    state = load_state_dict(path)
    detail = _mismatch(model.state_dict(), state)
    if detail:
        raise UserError(f"checkpoint {str(path)!r} does not fit model {model_name!r} ({detail}): "
                        "pass weights trained for this architecture and number of classes")
    model.load_state_dict(state)


def _mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """What keeps a state_dict from loading, in a few words (torch's message lists every key)."""
    parts = []
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensors of another shape, e.g. {k} {tuple(state[k].shape)} instead of {tuple(own[k].shape)}")
    for what, keys in (("missing", [k for k in own if k not in state]), ("unexpected", [k for k in state if k not in own])):
        if keys:
            parts.append(f"{len(keys)} {what} keys, e.g. {keys[0]}")
    return "; ".join(parts)


def checkpoint_sha256(checkpoint: str | Path) -> str:
    """The sha256 of a user checkpoint (its content is its identity, not its path)."""
    if not Path(checkpoint).is_file():
        raise UserError(f"checkpoint {str(checkpoint)!r} does not exist: check the path")
    return sha256_file_cached(checkpoint)


def pretrained_weights(model_name: str) -> str:
    """The timm weights --pretrained loads for a model name, as <architecture>.<tag>: the tag the name carries
    (resnet50.tv_in1k: torchvision's weights), else timm's default for the architecture."""
    import timm

    name = _resolve(model_name)
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an architecture timm knows, with a tag it does not
        arch = name.split(".", 1)[0]
        tags = ", ".join(n.split(".", 1)[1] for n in timm.list_pretrained(arch + ".*"))
        raise UserError(f"model {model_name!r} names no pretrained weights of timm: use {arch}.<tag> with a tag "
                        f"of {tags}") from None
    if cfg is None or not cfg.has_weights:
        raise UserError(f"timm has no pretrained weights for {model_name!r}: pass --checkpoint PATH (a state_dict "
                        "of your own) or train the baseline (leave out --pretrained)")
    return f"{cfg.architecture}.{cfg.tag}" if cfg.tag else str(cfg.architecture)


def weights_source(model_name: str, pretrained: bool = False, checkpoint: str | Path | None = None) -> str | None:
    """Where a baseline's weights come from, for the identity of trials and experiments: None (trained here),
    'timm:<architecture>.<tag>' or 'sha256:<hex>' of a user checkpoint."""
    if pretrained and checkpoint is not None:
        raise UserError("--pretrained and --checkpoint both name the baseline's weights: pass one of them")
    if pretrained:
        return f"timm:{pretrained_weights(model_name)}"
    return None if checkpoint is None else f"sha256:{checkpoint_sha256(checkpoint)}"


def weights_identity(model_name: str, pretrained: bool = False, checkpoint: str | Path | None = None) -> dict[str, str]:
    """The weights' part of a trial's or an experiment's identity: {} for a baseline trained here (so identities
    made before imported weights existed keep their hashes), else {"weights": weights_source(...)}."""
    source = weights_source(model_name, pretrained, checkpoint)
    return {} if source is None else {"weights": source}


def _check_pretrained_classes(weights: str, num_classes: int, dataset: str) -> None:
    import timm

    have = timm.models.get_pretrained_cfg(weights).num_classes
    if have != num_classes:
        raise UserError(f"timm's pretrained {weights} classifies {have} classes and {dataset} has {num_classes}: "
                        f"use data with the same classes (an ImageNet-1k folder), or --checkpoint PATH with weights "
                        f"for {num_classes} classes")


def _check_hub(weights: str) -> None:
    """Fail in seconds when timm would fetch `weights` from a hub it cannot reach (huggingface_hub retries for
    about a minute first); weights in the local cache, offline mode and other sources are left to timm."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(weights)
    if constants.HF_HUB_OFFLINE or not cfg.hf_hub_id:
        return
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    if not any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, f), str) for f in files):
        check_reachable(constants.ENDPOINT)


def load_pretrained(model: nn.Module, weights: str, num_classes: int) -> None:
    """Load timm's pretrained `weights` into `model` (fetched once from the Hugging Face hub, then cached)."""
    import timm

    try:
        _check_hub(weights)
        source = timm.create_model(weights, pretrained=True, num_classes=num_classes)
    except Exception as e:  # an offline download fails as OSError, ConnectionError, HTTPError, LocalEntryNotFoundError...
        why = (str(e).strip().splitlines() or [""])[0][:160]
        raise UserError(f"timm's pretrained weights {weights!r} could not be loaded ({type(e).__name__}: {why}): "
                        "allow the download once (timm caches it), or pass --checkpoint PATH with a state_dict "
                        "of your own") from None
    model.load_state_dict(source.state_dict())


def get_baseline(model_name: str, dataset: str, recipe: Recipe, *, seed: int = 0, subset_per_class: int | None = None,
                 checkpoint: str | Path | None = None, pretrained: bool = False,
                 device: torch.device = torch.device("cpu"), channels_last: bool = True, compile: bool = False,
                 root: Path | None = None, data: ArrayDataset | None = None, selection: str = "val") -> Baseline:
    """The trained baseline for this spec: from the cache when present, else trained (or imported) and cached.

    It trains on the training images less the validation hold-out (`selection` "val", the protocol's default;
    given `data`, its own selection), and records validation and test top-1/top-5. With `checkpoint` (a user's
    state_dict) or `pretrained` (timm's weights for the model name, see pretrained_weights) nothing trains: the
    weights are imported and measured.
    """
    name = _resolve(model_name)
    selection = data.selection if data is not None else check_selection(selection)
    subset = subset_per_class if subset_per_class is not None else recipe.subset_per_class
    source = weights_source(model_name, pretrained, checkpoint)  # refuses both, a missing file, no weights
    ckpt_sha = source.removeprefix("sha256:") if checkpoint is not None else None
    weights = source.removeprefix("timm:") if pretrained else None
    if data is None and not dataset.startswith("imagefolder:"):
        data = load_dataset(dataset, selection=selection)  # bad input (unknown or missing data) fails here
    fingerprint = data.fingerprint if data is not None else data_fingerprint(dataset)  # checks an image folder
    n_train = len(data.train.subset_per_class(subset).y) if data is not None else \
        image_folder_train_images(dataset.split(":", 1)[1], selection)
    if checkpoint is None and weights is None and n_train < recipe.batch_size:
        raise UserError(f"{dataset} has {n_train} training images, fewer than one batch of recipe {recipe.name!r} "
                        f"({recipe.batch_size}): add images or use a recipe with a smaller batch_size")
    if weights is not None:
        _check_pretrained_classes(weights, data.num_classes if data is not None else
                                  image_folder_classes(dataset.split(":", 1)[1]), dataset)
    spec = BaselineSpec(name, dataset, recipe, seed, subset, ckpt_sha, selection, fingerprint, weights)
    folder = (results_dir() if root is None else Path(root)) / "baselines" / spec.key
    cached = _load_cached(spec, folder)
    if dist.all_true(cached is not None):  # under torchrun: every rank loads it, or every rank trains
        return cached
    # bad input (an unknown or missing dataset, a checkpoint or pretrained weights that do not fit) fails here,
    # before the lock file of the cache entry exists: nothing is written
    if checkpoint is not None and data is not None:
        load_user_checkpoint(models.create(name, num_classes=data.num_classes), checkpoint, name)
    # workers sharing RESULTS_DIR train a baseline once; the others wait, then load it. Under torchrun the ranks
    # are one worker: rank 0 takes the lock and the others wait for it at a barrier (a lock per rank would
    # deadlock: the rank holding it trains in DDP and waits for the ranks waiting on the lock)
    with _locked(folder) if dist.is_main() else contextlib.nullcontext():
        dist.barrier()
        cached = _load_cached(spec, folder)
        if dist.all_true(cached is not None):
            return cached
        return _build(spec, folder, checkpoint, device, channels_last, compile, data)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(f".{folder.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel when a holder is killed
        try:
            for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # a writer killed mid-store
                shutil.rmtree(stale, ignore_errors=True)
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build(spec: BaselineSpec, folder: Path, checkpoint: str | Path | None, device: torch.device,
           channels_last: bool, compile: bool, data: ArrayDataset | None) -> Baseline:
    """Train (or import) the baseline and cache it; the caller holds the entry's lock."""
    name, dataset, recipe, seed, subset = spec.model, spec.dataset, spec.recipe, spec.seed, spec.subset_per_class
    loaders = open_loaders(dataset, recipe.batch_size, device, seed=seed, subset_per_class=subset,
                           channels_last=channels_last, data=data, selection=spec.selection, model=name)
    torch.manual_seed(seed)
    model = models.create(name, num_classes=loaders.num_classes)
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    if checkpoint is not None or spec.pretrained is not None:
        if checkpoint is not None:
            load_user_checkpoint(model, checkpoint, name)
        else:  # downloaded under the entry's lock: workers sharing RESULTS_DIR fetch it once
            load_pretrained(model, spec.pretrained, loaders.num_classes)
        runner = prepare_model(model, device, channels_last)
    else:
        runner = prepare_model(model, device, channels_last, compile)
        history = fit(runner, loaders.train, None, recipe, device, desc=f"baseline {spec.key} ",
                      on_epoch=lambda row: crash_point("baseline"))
    train_seconds = time.perf_counter() - t0
    metrics = evaluate(runner, loaders.test, device, autocast_for(device))
    val = evaluate(runner, loaders.val, device, autocast_for(device))
    model = model.cpu().to(memory_format=torch.contiguous_format).eval()
    source = "checkpoint" if checkpoint else "pretrained" if spec.pretrained else "trained"
    meta = {"spec": spec.to_dict(), "key": spec.key, "source": source,
            "test": metrics, "val": val, "data": data.split_info() if data is not None else
            {"dataset": dataset, "fingerprint": spec.data_fingerprint, "selection": spec.selection}, "train": history[-1] if history else None, "history": history,
            "train_seconds": train_seconds, "train_images": sum(r.get("train_images", 0) for r in history),
            "params": count_params(model), "flops": count_flops(model, loaders.input_size),
            "input_size": list(loaders.input_size), "num_classes": loaders.num_classes,
            "environment": environment(device), "world_size": dist.world_size()}
    if dist.is_main():
        _store(spec, folder, model, meta)
    dist.barrier()  # the entry exists before any rank goes on
    return Baseline(spec, folder, model, meta, cached=False)


def _resolve(model_name: str) -> str:
    try:
        return models.resolve(model_name)
    except models.UnknownModelError as e:
        raise UserError(str(e)) from None
