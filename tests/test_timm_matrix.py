"""The timm matrix (make timm-matrix): which modules count as CNN families, and one row end to end."""
import torch.nn as nn
from timm.layers import Attention, SelectiveKernel

from bench.checks import timm_matrix


def test_channel_attention_stays_token_attention_goes():
    """Selective-kernel attention is part of a CNN; query-key attention (and nn.MultiheadAttention) is not."""
    assert not timm_matrix._is_attention(SelectiveKernel(16, 16).attn)
    assert timm_matrix._is_attention(Attention(16, num_heads=2))
    assert timm_matrix._is_attention(nn.MultiheadAttention(16, 2))


def test_one_row_runs_and_writes(tmp_path):
    import logging

    row = timm_matrix._one("test_resnet")
    assert row["status"] == "ok", row
    assert logging.root.manager.disable == logging.NOTSET  # the tests after this one still log warnings
    assert row["gate_vs_removal"] < timm_matrix.TOLERANCE and row["params_pruned"] < row["params"]
    rows = [{"family": "resnet", "model": "test_resnet", **row},
            {"family": "x", "model": "y", "status": "refused", "reason": "y: a | b", "seconds": 0.1}]
    timm_matrix.write(rows, tmp_path, "python -m bench.checks.timm_matrix", 12.0, 90)
    md = (tmp_path / "matrix.md").read_text()
    assert "`test_resnet` | ok" in md and "a \\| b" in md
    assert "2 families: 1 pruned, 1 refused with a named construct, 0 failed" in (tmp_path / "README.md").read_text()


def test_the_note_names_the_constructs_the_removal_check_excluded():
    excluded = {"a": "removing it breaks SplitAttn (layer1.0.conv2): shape '[1, 2, 64]' is invalid",
                "b": "removing it breaks SplitAttn (layer2.0.conv2): shape '[1, 2, 128]' is invalid",
                "c": "its gate differs from its removal in HSMSSD (stages.0.mixer): relative error 9.3e-02",
                "d": "normalised across channels by LayerNorm2d norm"}
    assert timm_matrix.checked_out(excluded) == "removal check excluded groups of HSMSSD (x1), SplitAttn (x2)"
    assert timm_matrix.checked_out({"d": excluded["d"]}) == ""
