"""HTML around the figures: pages that work offline (plotly.js once per results folder, PLOTLY_JS, loaded by a
relative path; no CDN), figures drawn from a JSON block, and the small scripts of the experiment and
comparison pages."""
from __future__ import annotations

import html
import json
import re
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1280px;padding:0 18px 40px;color:#222}
h1{font-size:1.5em;margin:18px 0 4px} h2{font-size:1.2em;margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin:0 0 12px} .note{color:#666;font-size:.92em} nav a{margin-right:14px}
table{border-collapse:collapse;margin:8px 0;font-size:.93em} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
td:first-child,th:first-child,table.text td,table.text th{text-align:left} th{white-space:nowrap} code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
.plot{width:100%} .card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:8px 0;background:#fafafa}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px} label{margin-right:16px;white-space:nowrap}
"""

# draws every figure of SITE.figures into the div of the same id, then runs the page's own script
BOOT = """
const SITE = JSON.parse(document.getElementById('site-data').textContent);
const CONFIG = {responsive: true, displaylogo: false};
Promise.all(Object.entries(SITE.figures).map(([id, fig]) => Plotly.newPlot(id, fig.data, fig.layout, CONFIG)))
  .then(() => { if (typeof sitePage === 'function') sitePage(SITE); document.body.dataset.ready = '1'; });
"""

# experiment page: a click on a point (or the select) highlights its matched partners on every front,
# shows its links and swaps in its layer-wise and agent-dynamics figures (precomputed per point)
EXPERIMENT_JS = """
function sitePage(SITE) {
  const fronts = Array.from(document.querySelectorAll('.pareto'));
  const select = document.getElementById('point-select');
  if (!select) return;  // no complete trials: nothing to choose
  function swap(divId, fig, message) {
    const div = document.getElementById(divId), note = document.getElementById(divId + '-note');
    if (!div) return;
    if (fig) { note.textContent = ''; div.style.display = ''; Plotly.react(div, fig.data, fig.layout, CONFIG); }
    else { note.textContent = message; div.style.display = 'none'; }
  }
  function choose(id) {
    const p = SITE.points[id];
    if (!p) return;
    select.value = id;
    fronts.forEach(gd => {
      const xs = [], ys = [];
      let hi = -1;
      gd.data.forEach((t, i) => {
        const m = t.meta || {};
        if (m.kind === 'highlight') hi = i;
        if (m.kind !== 'measured') return;
        (t.customdata || []).forEach((c, j) => {
          if (c[11] === id || (p.key && c[12] === p.key)) { xs.push(t.x[j]); ys.push(t.y[j]); }
        });
      });
      if (hi >= 0) Plotly.restyle(gd, {x: [xs], y: [ys]}, [hi]);
    });
    document.getElementById('point-info').innerHTML = p.info;
    swap('layers', SITE.layers[id], 'No kept channels are stored for this trial.');
    swap('dynamics', SITE.dynamics[id], 'No agent history for this point: DECORE trials with a stored ' +
         'trials/<method>-<id>/history.json only.');
  }
  fronts.forEach(gd => gd.on('plotly_click', ev => {
    const pt = ev.points[0];
    if (pt && pt.data.meta && pt.data.meta.kind === 'measured') choose(pt.customdata[11]);
  }));
  select.addEventListener('change', () => choose(select.value));
  if (SITE.initial) choose(SITE.initial);
}
"""

# comparison page: the checkboxes show and hide whole experiments (traces carry meta.experiment) on every figure
COMPARE_JS = """
function sitePage(SITE) {
  const figs = Array.from(document.querySelectorAll('.compare'));
  const boxes = Array.from(document.querySelectorAll('input.experiment'));
  function apply() {
    const on = new Set(boxes.filter(b => b.checked).map(b => b.value));
    figs.forEach(gd => {
      if (gd.data.length) Plotly.restyle(gd, {visible: gd.data.map(t => on.has((t.meta || {}).experiment))});
    });
  }
  boxes.forEach(b => b.addEventListener('change', apply));
  apply();
}
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def fig_dict(fig: go.Figure) -> dict[str, Any]:
    return json.loads(fig.to_json())


def plot_div(div_id: str, css_class: str = "plot") -> str:
    return f'<div id="{esc(div_id)}" class="{esc(css_class)}"></div>'


PLOTLY_JS = "plotly.min.js"  # written once into the results folder by write_site


def plotly_asset() -> str:
    """plotly.js as the installed plotly package bundles it (the pages load it from the results folder)."""
    return get_plotlyjs()


def page(title: str, body: str, data: dict[str, Any] | None = None, script: str = "", root: str = "") -> str:
    """A page; with `data` (SITE: figures by div id, ...) it loads plotly.js from `root` + PLOTLY_JS, the one
    copy in the results folder (`root` is the way up to it: '' or '../')."""
    head = f'<meta charset="utf-8"><meta name="viewport" content="width=device-width"><title>{esc(title)}</title>' \
           f"<style>{CSS}</style>"
    tail = ""
    if data is not None:
        head += f'<script src="{esc(root + PLOTLY_JS)}"></script>'
        # "</" would end the script element early; JSON allows the escaped slash
        payload = json.dumps(data, allow_nan=False, default=str).replace("</", "<\\/")
        tail = f'<script type="application/json" id="site-data">{payload}</script><script>{script}{BOOT}</script>'
    return f"<!DOCTYPE html>\n<html lang=\"en\"><head>{head}</head><body>{body}{tail}</body></html>\n"


def table(header: list[str], rows: list[list[str]], css_class: str = "") -> str:
    """An HTML table; cells are HTML already (escape them with `esc`). Numbers right-aligned unless class text."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{esc(css_class)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ------------------------------------------------------------------ a small Markdown subset (paper.md)

def _inline(text: str, prefix: str) -> str:
    def link(m: re.Match) -> str:
        url = m.group(3)
        url = url if re.match(r"^(https?:|#|/)", url) else prefix + url
        if m.group(1):
            return f'<img alt="{esc(m.group(2))}" src="{esc(url)}" style="max-width:100%">'
        return f'<a href="{esc(url)}">{esc(m.group(2))}</a>'

    parts = re.split(r"(`[^`]*`|!?\[[^\]]*\]\([^)]*\))", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"<code>{esc(part[1:-1])}</code>")
        elif m := re.fullmatch(r"(!?)\[([^\]]*)\]\(([^)]*)\)", part):
            out.append(link(m))
        else:
            t = esc(part)
            t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
            out.append(re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", t))
    return "".join(out)


def markdown(text: str, prefix: str = "", shift: int = 1) -> str:
    """Headings (moved down `shift` levels), tables, lists, code blocks, paragraphs; relative links get `prefix`."""
    out, para, rows, items, code = [], [], [], [], None
    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para), prefix)}</p>")
            para.clear()
        if rows:
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows
                     if not re.fullmatch(r"\|?[\s:|-]+\|?", r.strip())]
            out.append(table([_inline(c, prefix) for c in cells[0]], [[_inline(c, prefix) for c in r] for r in cells[1:]]))
            rows.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i, prefix)}</li>" for i in items) + "</ul>")
            items.clear()
    for line in text.splitlines():
        if code is not None:
            if line.startswith("```"):
                out.append(f"<pre><code>{esc(chr(10).join(code))}</code></pre>")
                code = None
            else:
                code.append(line)
            continue
        s = line.strip()
        if bool(rows) != s.startswith("|") and (rows or para or items):
            flush()  # a table starts or ends here
        if s.startswith("```"):
            flush()
            code = []
        elif m := re.match(r"(#{1,6})\s+(.*)", s):
            flush()
            level = min(len(m.group(1)) + shift, 6)  # the page has its own h1
            out.append(f"<h{level}>{_inline(m.group(2), prefix)}</h{level}>")
        elif s.startswith("|"):
            rows.append(s)
        elif re.match(r"[-*]\s+", s):
            items.append(re.sub(r"^[-*]\s+", "", s))
        elif not s:
            flush()
        elif items:
            items[-1] += " " + s
        else:
            para.append(s)
    flush()
    return "\n".join(out)
