import json

import pytest
import torch

from bench.core.errors import UserError
from bench.core.io import atomic_write, config_hash, load_state_dict, save_state_dict, write_json


def test_config_hash_is_order_independent_and_content_sensitive():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"ok": 1})

    def broken(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"ok": 1}  # old content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]  # no temp file left


def test_state_dict_roundtrip_and_bad_files(tmp_path):
    state = {"w": torch.randn(3)}
    save_state_dict(tmp_path / "a.pt", state)
    assert torch.equal(load_state_dict(tmp_path / "a.pt")["w"], state["w"])
    # wrapped and prefixed checkpoints are unwrapped
    torch.save({"state_dict": {"module.w": state["w"]}}, tmp_path / "b.pt")
    assert set(load_state_dict(tmp_path / "b.pt")) == {"w"}

    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot be loaded safely"):
        load_state_dict(tmp_path / "trunc.pt")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module: refused by weights_only
    with pytest.raises(UserError, match="cannot be loaded safely"):
        load_state_dict(tmp_path / "module.pt")
    with pytest.raises(UserError, match="does not exist"):
        load_state_dict(tmp_path / "missing.pt")
