"""The results table: fixed columns, keyed upserts, Pareto flags, broken files refused with one line."""
import pandas as pd
import pytest

from bench.core.errors import UserError
from bench.trial.results import COLUMNS, ResultsTable, mark_pareto, normalise


def _row(h, method="l1", top1=90.0, flops=100, status="complete"):
    return {"row_type": "trial", "method": method, "config_hash": h, "status": status, "top1_pct": top1, "flops": flops,
            "knobs": f'{{"ratio": "{h}"}}'}  # each hash its own configuration (flags are per configuration)


def test_upsert_is_keyed_and_keeps_order(tmp_path):
    t = ResultsTable(tmp_path)
    t.upsert(_row("a"))
    t.upsert(_row("b", top1=80))
    t.upsert(_row("a", top1=95))  # replaced in place, not appended
    df = t.read()
    assert list(df["config_hash"]) == ["a", "b"] and list(df["top1_pct"]) == [95.0, 80.0]
    assert list(df.columns) == list(COLUMNS)
    assert pd.read_parquet(tmp_path / "runs.parquet")["config_hash"].tolist() == ["a", "b"]
    assert not list(tmp_path.glob(".*tmp"))


def test_pareto_flags_per_method():
    df = normalise([_row("a", top1=90, flops=100), _row("b", top1=80, flops=200), _row("c", top1=85, flops=50),
                    _row("d", "random", top1=10, flops=500), _row("e", top1=99, flops=10, status="failed")])
    flags = dict(zip(mark_pareto(df)["config_hash"], mark_pareto(df)["pareto"]))
    assert flags == {"a": True, "b": False, "c": True, "d": True, "e": False}


def test_unknown_columns_refused():
    with pytest.raises(ValueError, match="unknown columns"):
        normalise([{**_row("a"), "accuracy": 1}])


@pytest.mark.parametrize("text", ["not,a,results\ntable,at,all\n", "row_type,method,config_hash,status,top1_pct\ntrial,l1,a,complete,high\n"])
def test_broken_table_is_one_clear_error(tmp_path, text):
    (tmp_path / "runs.csv").write_text(text)
    with pytest.raises(UserError, match="results table .* is broken"):
        ResultsTable(tmp_path).read()
