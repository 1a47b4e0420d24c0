"""The results site (bench/report/site): pages written from a results folder, then opened in headless Chromium.

The results folder is built by hand from the committed smoke experiment's runs.csv (real columns) plus a
second experiment in the columns the results table is moving to (`test_top1`, `match_of`, `speedup`,
`n_seeds`, control rows), with trial folders (history.json as DECORE writes it) and an Optuna study.
Browser tests skip, with the reason, where Chromium, chromedriver or selenium is missing, and fail
instead where REQUIRE_CHROMIUM=1 (CI, see .ci/run).
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from bench.report.site import write_site
from bench.report.site.data import HOVER_FIELDS, find_experiments, hover_data, points, read_runs

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "results" / "resnet20-cifar10-smoke"
# Debian's packages; elsewhere point these at a Chromium/Chrome and its matching driver
CHROMIUM = Path(os.environ.get("CHROMIUM_BIN", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER_BIN", "/usr/bin/chromedriver"))


# ------------------------------------------------------------------ the results folder

def _history(keep_start: float, groups: list[str], epochs: int = 3) -> dict:
    """history.json as a DECORE trial writes it: one dict per joint epoch under "method"."""
    return {"method": [{"epoch": e + 1, "keep_prob": {g: keep_start - 0.1 * e for g in groups},
                        "flops_if_pruned": 40_000_000 - 5_000_000 * e, "reward": 1.0} for e in range(epochs)],
            "finetune": [{"epoch": 1, "train_loss": 0.5}], "info": {"lambda": 0.4}}


def _trial_folders(folder: Path, df: pd.DataFrame) -> None:
    for _, r in df[(df["row_type"] == "trial") & (df["method"] != "control")].iterrows():
        d = folder / "trials" / f"{r['method']}-{r['config_hash']}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"config_hash": r["config_hash"]}))
        if r["method"] == "decore":
            groups = list(json.loads(r["kept_channels"]))
            (d / "history.json").write_text(json.dumps(_history(0.9, groups)))


def _study(folder: Path, name: str) -> None:
    """A multi-objective study like the sweep's (top-1 up, FLOPs down) in folder/optuna.db."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder / 'optuna.db'}",
                                directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (60 + 10 * t.suggest_float("lambda", 0.1, 1.0), 4e7 * t.suggest_float("lambda", 0.1, 1.0)),
                   n_trials=6)
    (folder / "optuna.db").chmod(0o644)


def _new_columns(smoke: pd.DataFrame) -> pd.DataFrame:
    """A second experiment in the coming columns: 2 seeds a configuration, partners via match_of, control rows."""
    base = smoke[smoke["row_type"] == "baseline"]
    decore = smoke[smoke["method"] == "decore"]
    rows = [base]
    for seed in (0, 1):
        d = decore.assign(seed=seed, top1_pct=decore["top1_pct"] + seed * 0.4,
                          config_hash=decore["config_hash"] + f"s{seed}")
        rows.append(d)
        for method in ("l1", "random"):  # one partner per DECORE point, at its FLOPs
            p = d.assign(method=method, scope="internal", knob_name="flops_target",
                         knob_value=(d["flops"] / d["base_flops"]).round(4), top1_pct=d["top1_pct"] - 1.5,
                         config_hash=[f"{method}{i}s{seed}" for i in range(len(d))], match_of=d["config_hash"].to_numpy())
            rows.append(p)
    control = decore.iloc[:1].assign(method="control", knob_name=None, knob_value=None, knobs="{}",
                                      flops=decore["base_flops"].iloc[0], config_hash="control0", kept_channels=None)
    failed = decore.iloc[:1].assign(status="failed", reason="diverged", top1_pct=None, flops=None, config_hash="dead0")
    df = pd.concat([*rows, control, failed], ignore_index=True)
    df["experiment"], df["model"], df["profile"] = "resnet56-cifar10-fast", "cifar_resnet56", "fast"
    df = df.rename(columns={"top1_pct": "test_top1", "top5_pct": "test_top5"})
    df["val_top1"] = df["test_top1"] - 0.2
    df["speedup"] = df["base_latency_cpu_b1_ms"] / df["latency_cpu_b1_ms"]
    df["n_seeds"], df["budget_images"], df["label"] = 1, 50_000, None
    df["wandb_url"] = [f"https://wandb.ai/team/decore-bench/runs/{h}" for h in df["config_hash"]]
    return df


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site") / "results"
    smoke = root / "resnet20-cifar10-smoke"
    smoke.mkdir(parents=True)
    shutil.copy(SMOKE / "runs.csv", smoke / "runs.csv")
    _trial_folders(smoke, read_runs(smoke))
    _study(smoke, "resnet20-cifar10-smoke-decore")
    newer = root / "resnet56-cifar10-fast"
    newer.mkdir()
    _new_columns(read_runs(smoke)).to_csv(newer / "runs.csv", index=False)
    _trial_folders(newer, read_runs(newer))
    # as a sweep records it: this experiment's data is the official set, so published points are drawn
    (newer / "experiment.json").write_text('{"data": {"fingerprint": "official", "official": true}}')
    (root / "no-runs-here").mkdir()
    (root / "paper").mkdir()
    (root / "paper" / "paper.md").write_text("# Paper tables\n\n| Method | Top-1 |\n| --- | ---: |\n| DECORE-0.4 | 64.13 |\n")
    write_site(root)
    return root


def _drawn_rows(folder: Path) -> dict[str, int]:
    """Complete trial rows of runs.csv per method, counted from the file itself (not through bench.report.site)."""
    counts: dict[str, int] = {}
    with open(folder / "runs.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["row_type"] == "trial" and r["status"] == "complete":
                counts[r["method"]] = counts.get(r["method"], 0) + 1
    return counts


# ------------------------------------------------------------------ without a browser

def test_pages_load_the_one_plotly_of_the_folder(site: Path) -> None:
    pages = [site / "index.html", site / "compare.html", *(e / "index.html" for e in find_experiments(site))]
    assert [e.name for e in find_experiments(site)] == ["resnet20-cifar10-smoke", "resnet56-cifar10-fast"]
    assert "plotly.js v" in (site / "plotly.min.js").read_text()[:500]
    for page in pages:
        text = page.read_text()
        # nothing fetched from elsewhere: the only script file is the folder's plotly.js, by a relative path
        scripts = re.findall(r'<script src="([^"]*)"', text)
        assert "<link " not in text and "plotly.js v" not in text, page
        assert [(page.parent / s).resolve() for s in scripts] == ([] if page == site / "index.html" else
                                                                 [(site / "plotly.min.js").resolve()]), page
        assert page.stat().st_size < 1_000_000, page
    index = (site / "index.html").read_text()
    assert 'href="resnet20-cifar10-smoke/index.html"' in index and 'href="compare.html"' in index
    assert "<td>DECORE-0.4</td>" in index and "<h3>Paper tables</h3>" in index and "no-runs-here" not in index


def test_points_are_the_complete_trials(site: Path) -> None:
    for folder in find_experiments(site):
        pts = points(read_runs(folder), folder)
        assert pts["method"].value_counts().to_dict() == _drawn_rows(folder)


def test_partners_share_the_decore_point_as_key(site: Path) -> None:
    newer = points(read_runs(site / "resnet56-cifar10-fast"))
    groups = newer[newer["method"] != "control"].groupby("match_key")["method"].apply(sorted).tolist()
    assert groups and all(g == ["decore", "l1", "random"] for g in groups)
    # the smoke sweep predates match_of: no l1/random there ran at a DECORE trial's FLOPs
    smoke = points(read_runs(site / "resnet20-cifar10-smoke"))
    assert (smoke.loc[smoke["method"] != "decore", "match_key"] == "").all()


def test_seeds_are_summarised_per_configuration(site: Path) -> None:
    pts = points(read_runs(site / "resnet56-cifar10-fast"))
    decore = pts[pts["method"] == "decore"]
    assert (decore["n"] == 2).all()
    assert decore["top1_sd"].round(3).eq(round(pd.Series([0.0, 0.4]).std(), 3)).all()


def test_rows_already_averaged_over_seeds_keep_their_n_and_std() -> None:
    smoke = read_runs(SMOKE)
    pts = points(smoke.assign(n_seeds=3, test_top1_std=0.5))
    assert (pts["n"] == 3).all() and (pts["top1_sd"] == 0.5).all()
    first = hover_data(pts.iloc[:1])[0]
    assert first[HOVER_FIELDS.index("seeds")] == f"n=3: top-1 {pts['top1'].iloc[0]:.2f} ± 0.50"


def test_the_budget_fact_keeps_the_scratch_controls_apart() -> None:
    """Every method's images after the baseline, then the scratch controls' budgets (Liu et al.'s, from scratch)."""
    from bench.report.site.pages import experiment_facts

    rows = [{"row_type": "trial", "method": m, "budget": "equal", "budget_images": n, "selection": "val", "seed": 0}
            for m, n in (("decore", 1000), ("l1", 1000), ("scratch-b", 5200), ("scratch-b", 4800))]
    facts = experiment_facts(Path("."), pd.DataFrame(rows))
    assert facts["budget"] == "equal (1,000 images; scratch controls 4,800-5,200 from scratch)"


# ------------------------------------------------------------------ in headless Chromium

def _skip(reason: str) -> None:
    if os.environ.get("REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"REQUIRE_CHROMIUM=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _skip("selenium is not installed: pip install -e '.[dev]'")
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        _skip(f"headless Chromium is missing ({CHROMIUM}, {CHROMEDRIVER}): apt-get install -y chromium chromium-driver "
              "(the CI script .ci/run installs it)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    # recorded before any page script runs: uncaught errors and rejected promises
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
        "window.__errors = [];"
        "window.addEventListener('error', e => window.__errors.push(String(e.message)));"
        "window.addEventListener('unhandledrejection', e => window.__errors.push(String(e.reason)));")})
    yield driver
    driver.quit()


def open_page(driver, path: Path):
    """Load a page, wait for its figures, and fail on any JavaScript error it raised."""
    driver.get(path.as_uri())
    deadline = time.monotonic() + 60
    while not driver.execute_script("return document.readyState === 'complete' && "
                                    "(!window.Plotly || document.body.dataset.ready === '1')"):
        assert time.monotonic() < deadline, f"{path} did not finish drawing: {driver.execute_script('return window.__errors')}"
        time.sleep(0.1)
    assert_no_errors(driver, path)
    fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"
                                    ".filter(n => !n.startsWith('file:'))")
    assert not fetched, f"{path} fetched {fetched}: the site must work offline"
    return driver


def assert_no_errors(driver, where) -> None:
    errors = driver.execute_script("return window.__errors") or []
    severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors and not severe, f"JavaScript errors on {where}: {errors + severe}"


MEASURED = "return document.getElementById(arguments[0]).data.filter(t => t.meta && t.meta.kind === 'measured')"


@pytest.mark.parametrize("experiment", ["resnet20-cifar10-smoke", "resnet56-cifar10-fast"])
def test_fronts_draw_every_complete_trial(site: Path, browser, experiment: str) -> None:
    d = open_page(browser, site / experiment / "index.html")
    for div in ("pareto-flops", "pareto-params", "pareto-speedup"):
        counts: dict[str, int] = {}
        for method, n in d.execute_script(MEASURED + ".map(t => [t.meta.method, t.x.length])", div):
            counts[method] = counts.get(method, 0) + n  # one trace per series, several per method
        assert counts == _drawn_rows(site / experiment), div


def hover(driver, div: str, curve: int, point: int, expect: str) -> str:
    """Plotly's own hover on one point; the label's text once it shows `expect` (Plotly throttles hovers)."""
    deadline = time.monotonic() + 10
    while True:
        driver.execute_script("Plotly.Fx.unhover(arguments[0]);"
                              "Plotly.Fx.hover(arguments[0], [{curveNumber: arguments[1], pointNumber: arguments[2]}])",
                              div, curve, point)
        text = driver.execute_script("const h = document.querySelector('#' + arguments[0] + ' .hoverlayer');"
                                     "return h ? h.textContent : ''", div)
        if expect in text or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_hover_shows_the_trials_knob_and_flops(site: Path, browser) -> None:
    folder = site / "resnet20-cifar10-smoke"
    d = open_page(browser, folder / "index.html")
    runs = read_runs(folder)
    for method in ("decore", "l1"):
        traces = d.execute_script("return document.getElementById('pareto-flops').data.map(t => t.meta)")
        curve = next(i for i, m in enumerate(traces) if m.get("kind") == "measured" and m.get("method") == method)
        trial = d.execute_script("return document.getElementById('pareto-flops').data[arguments[0]].customdata[1][11]",
                                 curve)
        row = runs[runs["config_hash"] == trial].iloc[0]
        text = hover(d, "pareto-flops", curve, 1, trial)
        assert f"{row['knob_name']}={row['knob_value']:g}" in text, text
        assert f"FLOPs {row['flops'] / 1e6:.2f}M" in text, text
        assert trial in text
    assert_no_errors(d, "hover")


def test_choosing_a_point_rings_its_partners_and_shows_its_layers(site: Path, browser) -> None:
    folder = site / "resnet56-cifar10-fast"
    d = open_page(browser, folder / "index.html")
    pts = points(read_runs(folder), folder)
    chosen = pts[pts["method"] == "decore"].iloc[0]
    d.execute_script("const s = document.getElementById('point-select'); s.value = arguments[0];"
                     "s.dispatchEvent(new Event('change'))", chosen["id"])
    ring = d.execute_script("return document.getElementById('pareto-flops').data.find(t => t.meta.kind === 'highlight').x")
    assert len(ring) == 3  # the DECORE point and its L1 and random partners
    assert sorted(ring) == sorted((pts.loc[pts["match_key"] == chosen["match_key"], "flops"] / 1e6).tolist())
    bars = d.execute_script("return document.getElementById('layers').data.map(t => t.name)")
    # the fixture's partners copy DECORE's kept channels: one allocation, one bar naming all three
    assert len(bars) == 1 and bars[0].startswith(chosen["label"]) and "the same channels" in bars[0]
    info = d.find_element("id", "point-info").text
    assert "W&B run" in info and "trial folder" in info
    epochs = d.execute_script("return document.getElementById('dynamics').data.map(t => t.x.length)")
    assert epochs and set(epochs) == {3}
    assert_no_errors(d, "choosing a point")


def test_studies_are_drawn_with_optuna(site: Path, browser) -> None:
    d = open_page(browser, site / "resnet20-cifar10-smoke" / "index.html")
    assert d.execute_script("return document.getElementById('study-0-history').data.length") >= 1
    assert "optuna-dashboard sqlite:///optuna.db" in d.find_element("tag name", "body").text


def test_compare_checkboxes_choose_the_experiments(site: Path, browser) -> None:
    d = open_page(browser, site / "compare.html")
    # both tables record no fingerprint, selection or budget: one group, one figure
    assert len(d.find_elements("css selector", ".compare")) == 1
    visible = "return document.getElementById('compare-0').data.filter(t => t.visible !== false).map(t => t.meta.experiment)"
    assert set(d.execute_script(visible)) == {"resnet20-cifar10-smoke", "resnet56-cifar10-fast"}
    d.find_element("css selector", "input.experiment[value='resnet20-cifar10-smoke']").click()
    assert set(d.execute_script(visible)) == {"resnet56-cifar10-fast"}
    x = d.execute_script("return document.getElementById('compare-0').data.flatMap(t => t.x)")
    assert x and all(0 < v <= 100.0 for v in x)  # FLOPs kept, % of each experiment's own baseline
    # the newer experiment has a control: its changes are against it, not against the baseline
    pts = points(read_runs(site / "resnet56-cifar10-fast"))
    control = pts.loc[pts["method"] == "control", "top1"].mean()
    trace = d.execute_script("return document.getElementById('compare-0').data.find(t => t.meta.kind === 'measured' && "
                             "t.meta.experiment === 'resnet56-cifar10-fast' && t.meta.method === 'decore')")
    decore = pts[pts["method"] == "decore"].groupby("config_key", sort=False)["top1"].mean() - control
    assert sorted(trace["y"]) == pytest.approx(sorted(decore.tolist()))
    assert "control" in trace["name"] and "click" not in json.dumps(trace).lower()
    assert_no_errors(d, "compare")


def test_index_page_opens(site: Path, browser) -> None:
    d = open_page(browser, site / "index.html")
    assert len(d.find_elements("css selector", "table a[href$='index.html']")) == 2


def test_experiments_without_complete_trials_get_a_page(tmp_path: Path, browser) -> None:
    smoke = read_runs(SMOKE)
    tables = {"only-baseline": smoke.iloc[:1], "empty": smoke.iloc[0:0],
              "all-failed": smoke.iloc[1:3].assign(status="failed", top1_pct=None, reason="diverged")}
    for name, df in tables.items():
        (tmp_path / name).mkdir()
        df.to_csv(tmp_path / name / "runs.csv", index=False)
    write_site(tmp_path)
    for name in tables:
        assert "No complete trials yet" in (tmp_path / name / "index.html").read_text()
        open_page(browser, tmp_path / name / "index.html")
    open_page(browser, tmp_path / "compare.html")


def test_buttons_and_legend_toggle_control_and_series(site: Path, browser) -> None:
    d = open_page(browser, site / "resnet56-cifar10-fast" / "index.html")
    state = ("return document.getElementById('pareto-flops').data.filter(t => arguments[0](t.meta))"
             ".map(t => t.visible === undefined ? true : t.visible)")

    def visible(pick: str) -> set:
        return set(d.execute_script(state.replace("arguments[0]", pick)))

    # the y axis is validation top-1: published (test) numbers of other papers are not drawn on it
    assert visible("(m => m.kind === 'published')") == set()
    control = "(m => m.method === 'control')"
    assert visible(control) == {True}
    buttons = d.find_elements("css selector", "#pareto-flops .updatemenu-button")
    assert [b.text for b in buttons] == ["toggle no-pruning control"]
    buttons[0].click()
    assert visible(control) == {False}
    d.find_elements("css selector", "#pareto-flops .legend .traces .legendtoggle")[0].click()  # DECORE's series
    deadline = time.monotonic() + 5  # Plotly waits out a possible double click before it toggles
    while visible("(m => m.method === 'decore' && ['measured', 'front'].includes(m.kind))") != {"legendonly"}:
        assert time.monotonic() < deadline, "a legend click did not hide DECORE's points and front"
        time.sleep(0.1)
    assert visible("(m => m.method === 'l1' && m.kind === 'measured')") == {True}
    assert_no_errors(d, "toggles")


# ------------------------------------------------------------------ the committed site, as it is

COMMITTED = REPO / "results"
LINKS = """const out = Array.from(document.links).map(a => a.href);
if (typeof SITE !== 'undefined' && SITE.points) Object.values(SITE.points).forEach(p => {
  const doc = new DOMParser().parseFromString(p.info, 'text/html');
  doc.querySelectorAll('a[href]').forEach(a => out.push(new URL(a.getAttribute('href'), location.href).href));
});
return out;"""


def committed_pages() -> list[Path]:
    return [COMMITTED / "index.html", COMMITTED / "compare.html", *(e / "index.html" for e in find_experiments(COMMITTED))]


@pytest.mark.slow
def test_every_link_of_every_committed_page_leads_to_a_file(browser) -> None:
    from urllib.parse import unquote, urlparse

    dead = []
    for page in committed_pages():
        d = open_page(browser, page)
        for href in d.execute_script(LINKS):  # the page's links, and those each chosen point would show
            url = urlparse(href)
            if url.scheme == "file" and not Path(unquote(url.path)).exists():
                dead.append(f"{page.relative_to(COMMITTED)} -> {href}")
            assert url.scheme in ("file", "https"), href
    assert not dead, "dead links:\n" + "\n".join(dead)


def test_clicking_a_point_of_a_committed_page_chooses_it(browser) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    page = next(p for p in committed_pages() if "cpu" in p.parent.name)
    d = open_page(browser, page)
    gd = d.find_element("id", "pareto-flops")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", gd)
    # a real mouse click on the first DECORE point, where Plotly drew it
    curve, point = d.execute_script(
        "const gd = arguments[0]; const i = gd.data.findIndex(t => t.meta.kind === 'measured' && "
        "t.meta.method === 'decore'); return [i, 0];", gd)
    dx, dy = d.execute_script(
        "const gd = arguments[0], t = gd.data[arguments[1]], fl = gd._fullLayout, r = gd.getBoundingClientRect();"
        "return [fl.xaxis.l2p(t.x[arguments[2]]) + fl.xaxis._offset - r.width / 2,"
        "        fl.yaxis.l2p(t.y[arguments[2]]) + fl.yaxis._offset - r.height / 2];", gd, curve, point)
    trial = d.execute_script("return arguments[0].data[arguments[1]].customdata[arguments[2]][11]", gd, curve, point)
    d.execute_script("document.getElementById('point-select').value = ''")
    ActionChains(d).move_to_element_with_offset(gd, int(dx), int(dy)).pause(0.5).click().perform()
    deadline = time.monotonic() + 10
    while d.execute_script("return document.getElementById('point-select').value") != trial:
        assert time.monotonic() < deadline, "a click on a point did not choose it"
        time.sleep(0.1)
    assert trial in d.find_element("id", "point-info").text
    ring = d.execute_script("return arguments[0].data.find(t => t.meta.kind === 'highlight').x", gd)
    assert len(ring) >= 1
    assert_no_errors(d, "clicking a point")
