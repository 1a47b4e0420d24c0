"""mkdocs hook: pages that the code writes. `<!-- generated: runs-columns -->` becomes the table of runs.csv's
columns from bench.trial.results.COLUMNS (the one place that knows them); `<!-- generated: bad-input -->` becomes the
table of user errors from tests/test_bad_input.py's CASES (each one run through the real CLI by the tests)."""
from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def runs_columns() -> str:
    sys.path.insert(0, str(ROOT))
    from bench.trial.results import COLUMNS

    rows = [f"| `{name}` | {dtype} | {_cell(meaning)} |" for name, (dtype, meaning) in COLUMNS.items()]
    return "\n".join(["| column | type | meaning |", "| --- | --- | --- |", *rows])


def _bad_input_cases() -> list[tuple]:
    spec = importlib.util.spec_from_file_location("_bad_input_cases", ROOT / "tests" / "test_bad_input.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT))
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.CASES


def bad_input() -> str:
    rows = []
    for case, argv, env, table, expected in _bad_input_cases():
        args = [a.replace("{F}", "/path/to") for a in argv]
        prefix = " ".join(f"{k}={v.replace('{F}', '/path/to')}" for k, v in env.items())
        command = " ".join(filter(None, [prefix, "python -m bench", shlex.join(args)]))
        if table:
            command += f" (with a runs.csv that is {table.replace('-', ' ')})"
        holds = " … ".join(f"`{_cell(t)}`" for t in expected)
        rows.append(f"| {case} | `{_cell(command)}` | {holds} |")
    return "\n".join(["| case | command | the one-line message holds (value, then fix) |", "| --- | --- | --- |", *rows])


GENERATED = {"<!-- generated: runs-columns -->": runs_columns, "<!-- generated: bad-input -->": bad_input}


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs hook signature)
    for marker, make in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown


def profiles() -> str:
    import json

    rows = []
    for path in sorted((ROOT / "sweeps" / "profiles").glob("*.json")):
        p = json.loads(path.read_text())
        rows.append(f"| `{path.stem}` | {p['baseline_recipe']} | {p['joint_recipe']} | {p['finetune_recipe']} | "
                    f"{p['trials']} | {', '.join(p['methods'])} | {_cell(p['description'])} |")
    return "\n".join(["| profile | baseline recipe | DECORE joint | fine-tune | trials | methods | description |",
                      "| --- | --- | --- | --- | ---: | --- | --- |", *rows])


GENERATED["<!-- generated: profiles -->"] = profiles
