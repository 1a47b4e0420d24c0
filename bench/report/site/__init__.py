"""The interactive results site: offline HTML pages of stored results (issues #17, #29).

    from bench.report.site import write_site
    write_site("results")   # -> results/index.html, results/compare.html, results/<experiment>/index.html,
                            #    results/plotly.min.js (the one copy of plotly.js every page loads),
                            #    results/README.md (every folder: model, data, protocol, seeds, budget, status)

A newcomer finds each figure in one module, each a function of the points table (`data.points`, built
from runs.csv): `pareto` (fronts), `layers` (kept channels of a point and its partners), `dynamics`
(DECORE's agents, history.json), `studies` (Optuna's figures), `compare` (experiments together). `pages`
lays them out, `html` holds the page shell and its scripts, `data` is the one place that knows the
results table's column names.
"""
from __future__ import annotations

from pathlib import Path

from bench.core.io import atomic_write

from .data import find_experiments, read_runs
from .html import PLOTLY_JS, plotly_asset
from .pages import EXPERIMENT_PAGE, compare_page, experiment_page, index_page, results_readme

__all__ = ["write_site"]


def _write(path: Path, text: str) -> Path:
    path = atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    path.chmod(0o644)  # a page to serve and share (the temporary file was private)
    return path


def write_site(results_dir: str | Path) -> list[Path]:
    """Write the site for every experiment under results_dir (each folder with a runs.csv); returns the pages."""
    results_dir = Path(results_dir)
    asset = results_dir / PLOTLY_JS
    if not asset.is_file() or asset.read_text(encoding="utf-8") != plotly_asset():
        _write(asset, plotly_asset())  # one copy for every page of the folder
    tables = {folder.name: read_runs(folder) for folder in find_experiments(results_dir)}
    written = [_write(results_dir / name / EXPERIMENT_PAGE, experiment_page(results_dir / name, df, results_dir))
               for name, df in tables.items()]
    written.append(_write(results_dir / "compare.html", compare_page(results_dir, tables)))
    written.append(_write(results_dir / "index.html", index_page(results_dir, tables)))
    written.append(_write(results_dir / "README.md", results_readme(results_dir, tables)))
    return written
