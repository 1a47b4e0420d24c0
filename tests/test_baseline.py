import pytest
import torch

import models
from bench.cli import main
from bench.engine.baseline import get_baseline
from bench.core.errors import UserError
from bench.core.io import sha256_file
from bench.engine.recipe import load_recipe



def _get(synthetic, **kw):
    return get_baseline("resnet20", "synthetic", load_recipe("test-micro"), data=synthetic, **kw)


@pytest.mark.slow
def test_baseline_is_cached_and_verified(synthetic, tmp_path):
    first = _get(synthetic)
    assert not first.cached and (first.path / "model.pt").is_file()
    assert first.meta["params"] == 269_722 and first.meta["test"]["top1"] > 10
    again = _get(synthetic)
    assert again.cached and again.path == first.path
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    assert _get(synthetic, seed=1).path != first.path  # the seed changes the weights, so the key

    (first.path / "model.pt").write_bytes(b"garbage")  # corrupt entry: detected and rebuilt
    rebuilt = _get(synthetic)
    assert not rebuilt.cached and rebuilt.meta["sha256"] == sha256_file(rebuilt.path / "model.pt")
    assert _get(synthetic).cached
    assert not list(first.path.parent.glob(".*tmp*"))  # no temporary folder left


def test_user_checkpoint(synthetic, tmp_path):
    model = models.create("resnet20")
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    b = _get(synthetic, checkpoint=tmp_path / "mine.pt")
    assert b.meta["source"] == "checkpoint" and not b.meta["history"]
    assert torch.equal(b.model.fc.weight, model.fc.weight)

    torch.save(models.create("resnet32").state_dict(), tmp_path / "other.pt")
    with pytest.raises(UserError, match="does not fit model 'cifar_resnet20'"):
        _get(synthetic, checkpoint=tmp_path / "other.pt")
    (tmp_path / "trunc.pt").write_bytes((tmp_path / "mine.pt").read_bytes()[:1000])
    with pytest.raises(UserError, match="cannot be loaded safely"):
        _get(synthetic, checkpoint=tmp_path / "trunc.pt")


@pytest.mark.parametrize("args, message", [
    (["baseline", "--model", "resnt20", "--dataset", "synthetic"], "unknown model 'resnt20': did you mean"),
    (["baseline", "--model", "resnet20", "--dataset", "cifar1O"], "unknown dataset 'cifar1O'"),
    (["baseline", "--model", "resnet20", "--dataset", "synthetic", "--recipe", "nope"], "unknown recipe 'nope'"),
    (["baseline", "--model", "resnet20", "--dataset", "synthetic", "--checkpoint", "/no/such.pt"], "does not exist"),
    (["baseline", "--model", "resnet20", "--dataset", "synthetic", "--subset", "0"], "--subset 0"),
])
def test_cli_bad_input_is_one_line(args, message, tmp_path, monkeypatch, capsys):
    """The CLI's own entry point in this process (tests/test_bad_input.py runs the same refusals in a real one)."""
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own refusals exit
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err and "Traceback" not in err
    assert not (tmp_path / "baselines").exists()


@pytest.mark.slow
def test_cli_baseline_twice(capsys):
    """The command line's baseline, in this process (the CLI in a real process: tests/test_bad_input.py)."""
    args = ["baseline", "--model", "resnet20", "--dataset", "synthetic", "--recipe", "test-micro", "--device", "cpu"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "(cached" in second and first.split(":")[1] == second.split(":")[1]
