"""Bad input through the real CLI: one line naming the value and the fix, exit 2, no traceback, nothing written.

Also the security promises of issue 8: every torch.load is weights_only=True, and no credential (W&B key,
database password) reaches results, logs or W&B config.
"""
from __future__ import annotations

import ast
import logging
import os
import random
import socket
import subprocess
import sys
import tempfile
import urllib.error
from pathlib import Path

import optuna
import pytest
import torch

import models
from bench.cli import main
from bench.trial.results import COLUMNS
from bench.engine.tracking import read_offline_run, scrub

ROOT = Path(__file__).resolve().parents[1]
MICRO = ["--recipe", "test-micro", "--device", "cpu"]
BASE = ["baseline", "--model", "resnet20", "--dataset", "synthetic", *MICRO]
CIFAR = ["baseline", "--model", "resnet20", "--dataset", "cifar10", *MICRO]
RUN = ["run", "--model", "resnet20", "--dataset", "synthetic", "--device", "cpu", "--baseline-recipe", "test-micro",
       "--joint-recipe", "test-micro", "--finetune-recipe", "test-micro"]
SWEEP = ["sweep", "--model", "resnet20", "--dataset", "synthetic", "--profile", "test", "--device", "cpu", "--wandb", "off"]
IMAGES = ["baseline", "--model", "resnet20", *MICRO, "--dataset"]


def _experiment() -> str:
    """Where SWEEP keeps its runs.csv (the folder's name carries the experiment's identity hash)."""
    from sweeps.config import SweepConfig
    return SweepConfig("resnet20", "synthetic", profile="test").experiment


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Broken checkpoints and data folders, made once."""
    d = tmp_path_factory.mktemp("bad")
    torch.save(models.create("resnet20", num_classes=10).state_dict(), d / "r20.pt")
    blob = (d / "r20.pt").read_bytes()
    (d / "trunc.pt").write_bytes(blob[: len(blob) // 2])
    (d / "empty.pt").write_bytes(b"")
    (d / "random.pt").write_bytes(random.Random(0).randbytes(4096))  # seeded: the same bytes every run
    torch.save(models.create("resnet20", num_classes=10), d / "module.pt")  # a pickled nn.Module
    torch.save(models.create("resnet56", num_classes=10).state_dict(), d / "r56.pt")
    torch.save(models.create("resnet20", num_classes=100).state_dict(), d / "r20c100.pt")
    from PIL import Image
    for name, classes, per_class in (("oneclass", ["a"], 4), ("fewimages", ["a", "b"], 2), ("notimages", ["a", "b"], 2)):
        for split in ("train", "val"):
            for c in classes:
                (d / name / split / c).mkdir(parents=True)
                for i in range(per_class):
                    Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(d / name / split / c / f"{i}.png")
    (d / "notimages" / "train" / "a" / "0.png").write_bytes(b"this is text, not a picture")
    (d / "emptydata" / "cifar10").mkdir(parents=True)
    (d / "corrupt" / "cifar10").mkdir(parents=True)
    for split in ("train", "test"):
        (d / "corrupt" / "cifar10" / f"{split}.npz").write_bytes(b"not an npz" * 50)
    return d


def _csv(kind: str) -> str:
    if kind == "no-columns":
        return "a,b\n1,2\n"
    row = {c: "" for c in COLUMNS} | {"row_type": "baseline", "method": "baseline", "status": "complete",
                                      "config_hash": "baseline-x", "top1_pct": "ninety"}
    return ",".join(COLUMNS) + "\n" + ",".join(row.values()) + "\n"


# id, argv ({F} = the fixture folder), environment, runs.csv put in place first, strings the message must hold
CASES = [
    ("unknown model", ["baseline", "--model", "resnt56", "--dataset", "synthetic", *MICRO], {}, None,
     ["'resnt56'", "did you mean resnet56"]),
    ("unknown dataset", ["baseline", "--model", "resnet20", "--dataset", "cifar1O", *MICRO], {}, None,
     ["'cifar1O'", "did you mean cifar10"]),
    ("unknown method", RUN + ["--method", "decor", "--knob", "lambda=1"], {}, None, ["'decor'", "did you mean decore"]),
    ("unknown knob", RUN + ["--method", "l1", "--knob", "ration=0.5"], {}, None, ["'ration'", "did you mean ratio"]),
    ("lambda = 0", RUN + ["--method", "decore", "--knob", "lambda=0"], {}, None, ["lambda='0'", "outside (0,", "> 0"]),
    ("lambda < 0", RUN + ["--method", "decore", "--knob", "lambda=-1"], {}, None, ["lambda='-1'", "> 0"]),
    ("ratio = 1", RUN + ["--method", "l1", "--knob", "ratio=1"], {}, None, ["ratio='1'", "in [0, 1)"]),
    ("ratio > 1", RUN + ["--method", "random", "--knob", "ratio=1.5"], {}, None, ["ratio='1.5'", "in [0, 1)"]),
    ("FLOPs target out of reach", RUN + ["--method", "l1", "--knob", "flops_target=0.01"], {}, None,
     ["flops_target 0.01", "smallest reachable", "raise the target or use scope all"]),
    ("TRIALS=0", SWEEP + ["--trials", "0"], {}, None, ["TRIALS=0", "at least 1"]),
    ("unknown profile", SWEEP + ["--profile", "smok"], {}, None, ["'smok'", "did you mean smoke"]),
    ("unknown recipe", ["baseline", "--model", "resnet20", "--dataset", "synthetic", "--recipe", "cpu-tny"], {}, None,
     ["'cpu-tny'", "did you mean cpu-tiny"]),
    ("unknown device", BASE[:-2] + ["--device", "gpu"], {}, None, ["'gpu'", "use auto, cpu, cuda"]),
    ("missing data folder", CIFAR, {"DATA_DIR": "{F}/nowhere"}, None, ["nowhere/cifar10", "set DATA_DIR"]),
    ("empty data folder", CIFAR, {"DATA_DIR": "{F}/emptydata"}, None, ["emptydata/cifar10", "set DATA_DIR"]),
    ("corrupt data file", CIFAR, {"DATA_DIR": "{F}/corrupt"}, None, ["corrupt/cifar10/train.npz", "delete it"]),
    ("missing checkpoint", BASE + ["--checkpoint", "{F}/nope.pt"], {}, None, ["nope.pt", "check the path"]),
    ("truncated checkpoint", BASE + ["--checkpoint", "{F}/trunc.pt"], {}, None,
     ["trunc.pt", "truncated", "torch.save(model.state_dict(), path)"]),
    ("empty checkpoint", BASE + ["--checkpoint", "{F}/empty.pt"], {}, None, ["empty.pt", "torch.save(model.state_dict()"]),
    ("pickled module as checkpoint", BASE + ["--checkpoint", "{F}/module.pt"], {}, None,
     ["module.pt", "weights_only=True refuses", "torch.save(model.state_dict()"]),
    ("random bytes as checkpoint", BASE + ["--checkpoint", "{F}/random.pt"], {}, None,
     ["random.pt", "not a torch checkpoint", "torch.save(model.state_dict()"]),
    ("checkpoint of another architecture", BASE + ["--checkpoint", "{F}/r56.pt"], {}, None,
     ["r56.pt", "unexpected keys", "weights trained for this architecture"]),
    ("checkpoint with other classes", BASE + ["--checkpoint", "{F}/r20c100.pt"], {}, None,
     ["r20c100.pt", "fc.weight (100, 64) instead of (10, 64)", "number of classes"]),
    ("unreachable storage", SWEEP + ["--storage", "postgresql://u:secret@127.0.0.1:1/db"], {}, None,
     ["'postgresql://u:***@127.0.0.1:1/db'", "check the URL, that the server is up"]),
    ("results folder under a file", BASE, {"RESULTS_DIR": "{F}/r20.pt/results"}, None,
     ["r20.pt/results", "set RESULTS_DIR to a folder you can write"]),
    ("runs.csv without its columns", SWEEP + ["--trials", "1"], {}, "no-columns",
     ["runs.csv", "are missing", "restore it from runs.parquet or git, or move it away"]),
    ("runs.csv with text in a number column", SWEEP + ["--trials", "1"], {}, "bad-number",
     ["runs.csv", "'ninety'", "restore it from runs.parquet or git"]),
    ("report of a broken runs.csv", ["report"], {}, "bad-number", ["runs.csv", "'ninety'", "restore it"]),
    ("unknown L1 preset", RUN + ["--method", "l1", "--knob", "preset=li2017-Z"], {}, None,
     ["preset 'li2017-Z' is not defined for cifar_resnet20", "presets are"]),
    ("no method", SWEEP + ["--methods", ","], {}, None, ["no method given", "--methods decore,l1,random"]),
    ("round_to neither a number nor auto", SWEEP + ["--round-to", "atuo"], {}, None,
     ["--round-to 'atuo'", "use e.g. 8, or auto"]),
    ("round_to 0", RUN + ["--method", "l1", "--knob", "ratio=0.5", "--round-to", "0"], {}, None,
     ["--round-to '0'", "at least 1"]),
    ("align candidates not numbers", ["align", "--model", "resnet20", "--candidates", "1,eight"], {}, None,
     ["--candidates '1,eight'", "use e.g. 1,8,16"]),
    ("align FLOPs target of 1", ["align", "--model", "resnet20", "--flops-target", "1"], {}, None,
     ["--flops-target 1.0", "(0, 1)"]),
    ("unknown control", SWEEP + ["--control", "scrach"], {}, None, ["--control 'scrach'", "keep, scratch"]),
    ("missing image folder", IMAGES + ["imagefolder:{F}/nofolder"], {}, None, ["nofolder/train", "ImageNet layout"]),
    ("image folder with one class", IMAGES + ["imagefolder:{F}/oneclass"], {}, None,
     ["oneclass/train", "1 class folder(s)", "at least 2"]),
    ("image folder with a file that is no image", IMAGES + ["imagefolder:{F}/notimages"], {}, None,
     ["notimages/train/a/0.png", "not a readable image", "remove or replace it"]),
    ("image folder smaller than one batch", IMAGES + ["imagefolder:{F}/fewimages"], {}, None,
     ["fewimages", "fewer than one batch", "smaller batch_size"]),
]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


@pytest.fixture(autouse=True)
def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """The missing-data cases reach torchvision's download: make it fail as it does offline."""
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is off in the tests")
    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)


@pytest.mark.parametrize("argv, env, table, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(argv, env, table, expected, files, tmp_path, monkeypatch, capsys):
    for k, v in env.items():
        monkeypatch.setenv(k, v.format(F=files))
    results = Path(os.environ["RESULTS_DIR"])
    if table:
        (results / _experiment()).mkdir(parents=True)
        (results / _experiment() / "runs.csv").write_text(_csv(table))
    before, fixtures = _tree(results), _tree(files)
    try:
        code = main([a.format(F=files) for a in argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: "), err
    for text in expected:
        assert text in err, f"{text!r} not in {err!r}"
    assert "secret" not in err
    assert _tree(results) == before and _tree(files) == fixtures  # nothing written, nothing changed


def test_read_only_results_folder(monkeypatch, capsys):
    """A folder the process may not write (a read-only mount, another user's folder)."""
    target = Path("/sys/decore-results") if os.geteuid() == 0 else Path(tempfile.mkdtemp()) / "ro"
    if os.geteuid() != 0:
        target.parent.chmod(0o500)
    try:
        with tempfile.TemporaryFile(dir=target.parent):
            pytest.skip(f"{target.parent} is writable here")
    except OSError:
        pass
    monkeypatch.setenv("RESULTS_DIR", str(target))
    assert main(BASE) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: RESULTS_DIR='{target}' is not writable (Permission denied): "
                   "set RESULTS_DIR to a folder you can write, e.g. RESULTS_DIR=./results")
    assert not target.exists()


@pytest.mark.slow
@pytest.mark.parametrize("argv, expected", [
    (["baseline", "--model", "resnt56", "--dataset", "synthetic"], "did you mean resnet56"),
    (BASE + ["--checkpoint", "{F}/trunc.pt"], "truncated"),
])
def test_no_traceback_in_a_real_process(argv, expected, files, tmp_path):
    env = {**os.environ, "RESULTS_DIR": str(tmp_path / "results"), "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "bench", *[a.format(F=files) for a in argv]], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stdout == ""
    assert len(p.stderr.strip().splitlines()) == 1 and expected in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "results").exists()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_baselines")
def test_wandb_unreachable_and_no_credential_written(tmp_path, monkeypatch, capsys, caplog):
    """A sweep with W&B online but its server down, a W&B key and a storage URL with a password: it falls
    back to offline and finishes (exit 0), and neither secret appears in any file, log or message."""
    key, password = "fake-wandb-key-0123456789abcdef01234567", "pgS3cretPW"
    url = f"postgresql://bench:{password}@db.invalid:5432/optuna"
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("WANDB_API_KEY", key)
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home" / var.lower()))
    # sqlite cannot carry a password: the URL goes everywhere a PostgreSQL URL goes, the study lives in memory
    memory = optuna.storages.InMemoryStorage()
    monkeypatch.setattr("sweeps.study.open_storage", lambda u: memory if u == url else pytest.fail(u))
    caplog.set_level(logging.INFO)

    argv = [a for a in SWEEP if a not in ("--wandb", "off")]
    assert main(argv + ["--methods", "random", "--trials", "1", "--storage", url, "--wandb", "online"]) == 0
    out = capsys.readouterr()
    assert any("writing runs offline instead" in r.getMessage() for r in caplog.records)
    folder = Path(os.environ["RESULTS_DIR"]) / _experiment()
    runs = sorted((folder / "wandb").glob("offline-run-*"))
    configs = [read_offline_run(r)["config"] for r in runs]
    assert {"storage": "postgresql://bench:***@db.invalid:5432/optuna"}.items() <= next(c for c in configs if c).items()

    written = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert (folder / "runs.csv") in written and len(written) > 10
    logs = out.out + out.err + "\n".join(r.getMessage() for r in caplog.records)
    for secret in (key, password):
        assert secret not in logs
        assert [str(p) for p, blob in written.items() if secret.encode() in blob] == []


def test_scrub_hides_passwords():
    from bench.core.io import scrub_url

    for u in ("postgresql://u:pw@h:5432/db", "postgresql://u:p@ss@h/db", "mysql+pymysql://u:pw@h/db"):
        assert "pw" not in scrub(u).split("@")[0].split(":", 2)[-1] and "***" in scrub(u)
        assert "***" in scrub_url(u) and "pw@" not in scrub_url(u)
    assert scrub("postgresql://h/db?user=u&password=pw&sslmode=require") == "postgresql://h/db?user=u&password=***&sslmode=require"
    assert scrub({"WANDB_API_KEY": "k", "storage": "sqlite:///a.db"}) == {"storage": "sqlite:///a.db"}
    assert scrub("postgresql://u@h/db") == "postgresql://u@h/db"  # nothing to hide


def test_every_torch_load_is_weights_only():
    """A future torch.load without weights_only=True (a pickle that can run code) fails here."""
    offenders, calls = [], 0
    for path in _sources():
        for node, ok in _torch_loads(ast.parse(path.read_text())):
            calls += 1
            if not ok:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert calls >= 1 and offenders == []


def _torch_loads(tree: ast.AST) -> list[tuple[ast.AST, bool]]:
    """Every torch.load / torch.serialization.load in the code, and whether it is a weights_only=True call;
    an alias (`f = torch.load`) or `from torch import load` counts as a load that is not."""
    calls = {id(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
    out: list[tuple[ast.AST, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            out += [(node, False) for a in node.names if a.name == "load"]
        if not (isinstance(node, ast.Attribute) and node.attr == "load"):
            continue
        owner = ast.unparse(node.value)
        if owner not in ("torch", "torch.serialization"):
            continue
        call = calls.get(id(node))
        out.append((node, call is not None and any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)))
    return out


def test_the_torch_load_check_can_fail():
    bad = ["torch.load(p)", "torch.load(p, weights_only=False)", "f = torch.load", "from torch import load",
           "torch.serialization.load(p)"]
    assert [ok for src in bad for _, ok in _torch_loads(ast.parse(src))] == [False] * len(bad)
    assert [ok for _, ok in _torch_loads(ast.parse("torch.load(p, map_location='cpu', weights_only=True)"))] == [True]


def _sources() -> list[Path]:
    """The project's Python files: every folder but hidden ones (.venv, .git), outputs and data; not this file."""
    found = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "results", "data", "build")]
        found += [Path(folder) / n for n in names if n.endswith(".py")]
    return sorted(p for p in found if p.resolve() != Path(__file__).resolve())


def test_every_unreadable_checkpoint_gets_the_same_one_line_answer(tmp_path):
    """Bytes that are not a checkpoint fail inside torch.load in many ways (unpickling errors, bad magic numbers,
    short reads ...): each gets one line naming the file and the fix. 200 seeded files, the same ones every run."""
    from bench.core.errors import UserError
    from bench.core.io import load_state_dict

    path = tmp_path / "bytes.pt"
    for seed in range(200):
        path.write_bytes(random.Random(seed).randbytes(random.Random(seed).randint(1, 8192)))
        with pytest.raises(UserError) as e:
            load_state_dict(path)
        message = str(e.value)
        assert "\n" not in message and message.startswith(f"checkpoint {str(path)!r} cannot be loaded safely (")
        assert "cannot be loaded safely (not a torch checkpoint: " in message, (seed, message)
        assert message.endswith("pass a state_dict saved with torch.save(model.state_dict(), path)")
