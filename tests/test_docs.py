"""The documentation (issue 30): the site builds strictly, the README stays short, every number the README or the
docs quote from a results file matches that file, the guides' examples run, and help lists what exists."""
from __future__ import annotations

import html
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


# ------------------------------------------------------------------------------------------------ the site

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`mkdocs build --strict` (a broken link, anchor or nav entry is an error) into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, env={**_env(), "NO_MKDOCS_2_WARNING": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    return out


def _env() -> dict[str, str]:
    import os
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_site_builds_strictly_with_generated_pages(site: Path) -> None:
    from bench.trial.results import COLUMNS

    outputs = (site / "outputs" / "index.html").read_text()
    for column in COLUMNS:  # the runs.csv columns come from the code's own list
        assert f"<code>{column}</code>" in outputs, column
    troubleshooting = (site / "troubleshooting" / "index.html").read_text()
    for case in _bad_input_cases():  # every user error of the bad-input table
        assert f"<td>{html.escape(case[0], quote=False)}</td>" in troubleshooting, case[0]
    profiles = (site / "profiles" / "index.html").read_text()
    for path in (ROOT / "sweeps" / "profiles").glob("*.json"):
        assert f"<code>{path.stem}</code>" in profiles, path.stem
    assert "L2Norm" in (site / "methods" / "index.html").read_text()  # the example is included, not copied
    assert "TinyCNN" in (site / "models" / "index.html").read_text()
    assert not list(site.rglob("hooks.py"))


def _bad_input_cases() -> list[tuple]:
    """The table the troubleshooting page is generated from, read as the site's hook reads it."""
    return _load("_docs_hooks", ROOT / "docs" / "hooks.py")._bad_input_cases()


def test_readme_is_short_and_links_exist() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(((?!https?:)[^)#]+)(?:#[^)]*)?\)", text):  # relative links point at files
        assert (ROOT / target).exists(), target
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert "cff-version" in (ROOT / "CITATION.cff").read_text()


# ------------------------------------------------------------------------------------------ quoted numbers

def _runs(experiment: str) -> pd.DataFrame:
    return pd.read_csv(RESULTS / experiment / "runs.csv")


def _minutes(experiment: str, row_type: str | None = None) -> str:
    df = _runs(experiment)
    df = df if row_type is None else df[df["row_type"] == row_type]
    return f"{df['wall_seconds'].sum() / 60:.1f} min"


def _baseline(experiment: str, column: str = "top1_pct") -> str:
    df = _runs(experiment)
    return f"{df[df['row_type'] == 'baseline'].iloc[0][column]:.2f}%"


def _trials(experiment: str) -> int:
    return int((_runs(experiment)["row_type"] == "trial").sum())


def _timing(experiment: str) -> str:
    """`<model>, <n> trials: <minutes>`, as the README's and docs/profiles.md's tables write it."""
    return f"{_runs(experiment)['experiment'].iloc[0].split('-')[0]}, {_trials(experiment)} trials: {_minutes(experiment)}"


def _noted(experiment: str, pattern: str) -> str:
    """A number measured by hand (`time`), written once in the NOTES.md beside the data and quoted elsewhere."""
    found = re.search(pattern, (RESULTS / experiment / "NOTES.md").read_text())
    assert found, f"{experiment}/NOTES.md no longer says {pattern!r}"
    return found.group(1)


def _matrix() -> str:
    """The timm matrix's counts as docs/models.md quotes them, from results/timm-matrix/matrix.csv."""
    df = pd.read_csv(RESULTS / "timm-matrix" / "matrix.csv")
    ok, n = df[df["status"] == "ok"], df["status"].value_counts()
    return (f"{len(df)} families, {len(ok)} pruned (gate vs removal at most {ok['gate_vs_removal'].max():.1e}), "
            f"{n.get('refused', 0)} refused naming the")


def _matrix_checked() -> int:
    """Families pruned with groups the removal check excluded (their note names the construct)."""
    df = pd.read_csv(RESULTS / "timm-matrix" / "matrix.csv")
    return int(((df["status"] == "ok") & df["reason"].fillna("").str.startswith("removal check")).sum())


def _matrix_run() -> str:
    """The matrix's command and wall time as its README states them (written by bench.checks.timm_matrix.write)."""
    text = (RESULTS / "timm-matrix" / "README.md").read_text()
    command, wall = re.search(r"Command: `([^`]+)`", text), re.search(r"Wall time: ([\d.]+ min)", text)
    assert command and wall, "results/timm-matrix/README.md no longer states its command and wall time"
    return f"(`{command.group(1)}`, {wall.group(1)} on"


def _matched(experiment: str, tally: bool = False) -> str:
    """The matched-FLOPs table (or its tally sentence) that the README's hero quotes, from the experiment's runs.csv."""
    from bench.report.tables import matched_summary, matched_tally

    return (matched_tally if tally else matched_summary)(_runs(experiment))


def _gated(perf: str) -> str:
    df = pd.read_csv(RESULTS / perf)
    rows = df[df["measure"] == "gated / plain"]
    return ", ".join(f"{v:.2f} ({i:.2f})" for v, i in zip(rows["value"], rows["iqr"]))


def _wall_table(experiment: str) -> str:
    """Wall time per part, as the curated experiment's NOTES.md tabulates it (runs.csv's wall_seconds); a part is the
    baseline or the trial's method (decore, l1, control, scratch-b...)."""
    df = _runs(experiment)
    parts = df["method"].where(df["row_type"] != "baseline", "baseline")
    lines = ["| part | runs | summed | median run | shortest | longest |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, w in df.groupby(parts, sort=False)["wall_seconds"]:
        lines.append(f"| {name} | {len(w)} | {w.sum() / 60:.1f} min | {w.median():.0f} s | {w.min():.0f} s | {w.max():.0f} s |")
    return "\n".join(lines)


SMOKE20, SMOKE110 = "resnet20-cifar10-smoke-94a65d09", "resnet110-cifar10-smoke-94a65d09"
CPU20, MICRO = "resnet20-cifar10-cpu-bea263c0", "densenet40-cifar10-micro-cce59d0d"
CURATED = "resnet20-cifar10-cpu-agents-26682798"  # issue 28's curated experiment: 3 seeds, the paper's agents
TABLES = ("README.md", "docs/profiles.md")
TOOK = r"It took (\d+ min \d+ s)"  # the wall time measured with `time`, as a NOTES.md writes it

# (the files that quote it, the text they must hold, computed from the results file it comes from)
QUOTES: list[tuple[tuple[str, ...], Callable[[], str]]] = [
    *[(TABLES, lambda e=e: _timing(e)) for e in (SMOKE20, SMOKE110, CPU20, MICRO, CURATED)],
    (("README.md",), lambda: f"a 4-epoch baseline at {_baseline(SMOKE110)} test top-1"),
    (TABLES, lambda: f"took {_noted(SMOKE110, TOOK)} in all"),
    ((f"results/{SMOKE110}/NOTES.md",), lambda: f"is {_minutes(SMOKE110)}: the baseline"),
    ((f"results/{SMOKE110}/NOTES.md",), lambda: f"a 4-epoch baseline\n  at {_baseline(SMOKE110)} test top-1"),
    ((f"results/{SMOKE20}/NOTES.md",), lambda: f"{_trials(SMOKE20)} trials, every one complete"),
    ((f"results/{SMOKE20}/NOTES.md",), lambda: f"is {_minutes(SMOKE20)} on this"),
    ((f"results/{SMOKE20}/NOTES.md",), lambda: f"{_baseline(SMOKE20)}\n  test top-1"),
    ((f"results/{CPU20}/NOTES.md",), lambda: f"is {_minutes(CPU20)} (baseline {_minutes(CPU20, 'baseline')}, "
                                             f"{_trials(CPU20)} trials {_minutes(CPU20, 'trial')})"),
    ((f"results/{CPU20}/NOTES.md",), lambda: f"baseline at {_baseline(CPU20, 'val_top1_pct')} validation / "
                                             f"{_baseline(CPU20)} test top-1"),
    (("README.md",), lambda: _matched(CURATED)),
    (("README.md",), lambda: _matched(CURATED, tally=True)),
    ((f"results/{CURATED}/NOTES.md",), lambda: _wall_table(CURATED)),
    ((f"results/{CURATED}/NOTES.md",), lambda: _matched(CURATED)),
    ((f"results/{CURATED}/NOTES.md",), lambda: _matched(CURATED, tally=True)),
    ((f"results/{MICRO}/NOTES.md",), lambda: f"is {_minutes(MICRO)}."),
    ((f"results/{MICRO}/NOTES.md",), lambda: f"baseline at {_baseline(MICRO)} test top-1"),
    (("docs/models.md",), _matrix),
    (("docs/models.md",), _matrix_run),
    (("docs/models.md",), lambda: f"In {_matrix_checked()} of them the removal check excluded"),
    (("README.md",), lambda: _perf_pick()),
    (("results/perf/2026-12-04/README.md",), lambda: f"first table below ({_gated('perf/2026-12-04/perf.csv')})"),
    (("results/perf/2026-12-04/README.md",), lambda: f"it gave {_gated('perf/2026-12-04/run-before/perf.csv')}"),
]


PILOT = RESULTS / "agents-pilot"


def pilot_table(folder: Path = PILOT) -> str:
    """results/agents-pilot/README.md's table, from the trials' result.json and history.json."""
    import statistics

    rows = []
    for d in sorted(folder.glob("decore-*")):
        r, h = json.loads((d / "result.json").read_text()), json.loads((d / "history.json").read_text())
        med = [statistics.median(row["keep_prob"].values()) for row in h["method"]]
        rows.append((float(json.loads(r["knobs"])["lambda"]), med, r["flops_reduction_pct"], r["val_top1_pct"],
                     r["top1_pct"], h["method"][-1]["agent_step"]))
    lines = ["| lambda | agent steps | median keep-probability after epoch 1 / 2 / 3 | FLOPs removed | validation / test "
             "top-1 after fine-tuning |", "| --- | --- | --- | --- | --- |"]
    for lam, med, flops, val, test, steps in sorted(rows, reverse=True):
        lines.append(f"| {lam:g} | {steps} | {' / '.join(f'{m:.3f}' for m in med)} | {flops:.1f}% | {val:.2f}% / {test:.2f}% |")
    return "\n".join(lines)


def _pilot_recipe_quote() -> str:
    """The joint recipe's description quotes the pilot: what 3 epochs removed at lambda 0.9 and 0.45, and that the
    groups' keep-probabilities were all still above 0.99 after the first two epochs at those lambdas."""
    out = {}
    for d in sorted(PILOT.glob("decore-*")):
        r, h = json.loads((d / "result.json").read_text()), json.loads((d / "history.json").read_text())
        out[float(json.loads(r["knobs"])["lambda"])] = (r["flops_reduction_pct"], min(h["method"][1]["keep_prob"].values()))
    assert out[0.9][1] > 0.99 and out[0.45][1] > 0.99
    return f"3 epochs removed {out[0.9][0]:.1f}% of the FLOPs at lambda 0.9 and {out[0.45][0]:.1f}% at 0.45"


def _agents_values() -> str:
    v = json.loads((ROOT / "sweeps" / "profiles" / "cpu-agents.json").read_text())["methods"]["decore"]["values"]
    return f"({v[0]:g}, {v[1]:g} and {v[2]:g} of the break-even lambda)"


def _agents_added() -> str:
    v = json.loads((ROOT / "sweeps" / "profiles" / "cpu-agents.json").read_text())["methods"]["decore"]["values"]
    return f"added {v[3]:g} of the break-even lambda"


QUOTES += [
    (("results/agents-pilot/README.md",), pilot_table),
    (("bench/engine/recipes/cpu-agents-joint.json",), _pilot_recipe_quote),
    (("results/agents-pilot/README.md",), _agents_values),
    (("results/agents-pilot/README.md",), _agents_added),
]


def _perf_pick() -> str:
    """The main README's advice on alignment, from the committed perf run (results/perf/perf.csv)."""
    from bench.checks.perf_report import read_perf
    from bench.checks.perf_summary import pick_sentence

    return pick_sentence(read_perf(RESULTS / "perf"))


def test_the_perf_folder_readme_is_written_from_its_runs() -> None:
    """results/perf/README.md is `bench perf-readme`'s output for the files beside it, to the byte."""
    from bench.checks.perf_summary import readme

    assert (RESULTS / "perf" / "README.md").read_text() == readme(RESULTS / "perf")


@pytest.mark.parametrize("files, quote", QUOTES, ids=[f"{q[0][0]}#{i}" for i, q in enumerate(QUOTES)])
def test_quoted_numbers_match_their_results_file(files: tuple[str, ...], quote: Callable[[], str]) -> None:
    """A rerun that changes a number, or an edit of the number in the text, fails here until the two agree."""
    text = quote()
    for name in files:
        assert text in (ROOT / name).read_text(), f"{name} does not quote {text!r} (recomputed from results/)"


# ------------------------------------------------------------------------------------------ guides that run

def _load(module: str, path: Path):
    """Import a guide's example as if it were saved inside the package (methods/, models/)."""
    if module in sys.modules:
        return sys.modules[module]
    spec = importlib.util.spec_from_file_location(module, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.fixture
def profiles_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """The `test` profile with one more method's search space, as "adding a method" says to write it."""
    import sweeps.profile

    folder = tmp_path / "profiles"
    shutil.copytree(sweeps.profile.PROFILE_DIR, folder)
    monkeypatch.setattr(sweeps.profile, "PROFILE_DIR", folder)

    def add(method: str) -> None:
        data = json.loads((folder / "test.json").read_text())
        data["methods"][method] = {"knob": "flops_target", "range": [0.4, 0.9]}
        (folder / "test.json").write_text(json.dumps(data))
    return add


def _sweep(model: str, methods: tuple[str, ...]) -> pd.DataFrame:
    from sweeps.config import SweepConfig
    from sweeps.study import run_sweep

    folder = run_sweep(SweepConfig(model, "synthetic", profile="test", methods=methods, trials=1, match=None,
                                   control=False, device="cpu", wandb="off"))
    return pd.read_csv(folder / "runs.csv")


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_baselines")
def test_adding_a_method_guide_runs(profiles_with: Callable[[str], None]) -> None:
    import methods

    _load("methods.l2_norm", ROOT / "docs" / "examples" / "l2_norm.py")
    assert "l2_norm" in methods.METHODS and methods.code_version("l2_norm")
    profiles_with("l2_norm")
    rows = _sweep("resnet20", ("l2_norm",))
    trial = rows[(rows["method"] == "l2_norm") & (rows["status"] == "complete")]
    assert len(trial) == 1 and trial["flops_reduction_pct"].iloc[0] > 5


@pytest.mark.slow
def test_adding_a_model_guide_runs() -> None:
    import models

    _load("models.cifar_tiny", ROOT / "docs" / "examples" / "tiny_cnn.py")
    assert models.resolve("cifar_tiny_cnn") == "cifar_tiny_cnn"
    rows = _sweep("cifar_tiny_cnn", ("decore", "l1"))
    done = rows[(rows["row_type"] == "trial") & (rows["status"] == "complete")]
    assert set(done["method"]) == {"decore", "l1"}
    assert done.loc[done["method"] == "l1", "flops_reduction_pct"].iloc[0] > 5


# ------------------------------------------------------------------------------------------ help

def test_help_lists_methods_profiles_defaults_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    import methods
    from bench.cli import build_parser
    from sweeps.profile import list_profiles

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices  # noqa: SLF001
    for name, p in sub.items():
        text = p.format_help()
        assert "DATA_DIR" in text and "RESULTS_DIR" in text, name
    for name in ("run", "sweep", "search"):
        text = " ".join(sub[name].format_help().split())
        assert text.count("python -m bench " + name) >= 2, name  # two examples
        assert "(default:" in text
        for method in methods.METHODS:
            assert method in text, (name, method)
    for name in ("sweep", "search"):
        text = " ".join(sub[name].format_help().split())
        for profile in list_profiles():
            assert profile in text, (name, profile)
        assert "~1 h" not in text  # no estimate that was never measured


def test_make_help_lists_every_target_and_variable() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.M)) - {"help"}
    variables = set(re.findall(r"^([A-Z_]+) \?=", makefile, re.M))
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    for target in targets:
        assert f"make {target}" in out, target
    for variable in variables | {"STORAGE"}:
        assert f"{variable}=" in out, variable
    # make search on a CPU takes auto's choice: the Makefile passes PROFILE through, never a fixed `fast`
    search = makefile.split("\nsearch:", 1)[1].split("\n\n", 1)[0]
    assert "--profile $(PROFILE)" in search and "fast" not in search


@pytest.mark.slow
@pytest.mark.usefixtures("reuse_baselines")  # its RESULTS_DIR is the test's: the shared baseline is read from the cache
def test_run_prints_phases_and_epochs_off_a_terminal(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "bench", "run", "--model", "resnet20", "--dataset", "synthetic",
                        "--method", "l1", "--knob", "ratio=0.5", "--device", "cpu", "--baseline-recipe", "test-micro",
                        "--joint-recipe", "test-trial", "--finetune-recipe", "test-trial"], cwd=ROOT,
                       env={**_env(), "RESULTS_DIR": str(tmp_path / "results"), "BENCH_LATENCY_ROUNDS": "3,5"},
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    for line in ("phase 1/4: baseline", "phase 2/4: l1", "phase 3/4: fine-tune", "phase 4/4: time",
                 "epoch 1/1: train loss"):
        assert line in p.stderr, line


def test_profile_descriptions_quote_their_own_options() -> None:
    """A description that names an option's value (`agent_init=1`) says what the profile's options set."""
    for path in sorted((ROOT / "sweeps" / "profiles").glob("*.json")):
        profile = json.loads(path.read_text())
        options = {k: v for m in profile["methods"].values() for k, v in (m.get("options") or {}).items()}
        for name, value in re.findall(r"\b([a-z_]+)=([0-9.]+)\b", profile.get("description", "")):
            assert name in options, (path.name, name)
            assert float(value) == float(options[name]), (path.name, name, value, options[name])
