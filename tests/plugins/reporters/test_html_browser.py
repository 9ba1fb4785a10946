"""The HTML report in a real headless browser (Debian's chromium driven by Playwright).

The LeNet demo's command (torch vs ort-fp16 and ort-int8, --diagnose, one page per target) and a
transformer (the zoo's encoder vs ort-int8) are run through the CLI; each page must load with no
console error and no request leaving the file, draw its plots, sort on a header click and filter.
PARITY_BROWSER=1 bash scripts/setup.sh installs chromium (as root, once); without it this module skips. Screenshots go to
$PARITY_SCREENSHOT_DIR when set (docs/img: `PARITY_SCREENSHOT_DIR=docs/img pytest ...`), else tmp.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[3]
ZOO = ROOT / "tests" / "models" / "zoo.py"

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="chromium not installed (PARITY_BROWSER=1 bash scripts/setup.sh installs it, as root)")


def parity(*args, ok=(0,)):
    r = subprocess.run([sys.executable, "-m", "parity", *map(str, args)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode in ok, r.stderr
    return r


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    d = tmp_path_factory.mktemp("html")
    x = np.random.default_rng(0).random((16, 1, 28, 28), dtype=np.float32)
    np.savez(d / "in.npz", x=x)
    out = parity("compare", f"{ZOO}:lenet", "--ref", "torch", "--target", "ort-fp16", "--target", "ort-int8",
                 "--inputs", d / "in.npz", "--diagnose", "--workdir", d / "cache", "-q",
                 "--html", d / "lenet.html", "--json", d / "lenet.json")
    assert f"html report written to {d / 'lenet.ort-int8.html'}" in out.stdout  # one page per target
    # a stricter threshold than the default so the page shows a first divergence and culprits
    parity("compare", f"{ZOO}:encoder", "--ref", "torch", "--target", "ort-int8", "--diagnose", "--threshold",
           "0.9999", "--workdir", d / "cache", "-q", "--html", d / "encoder.html", "--json", d / "encoder.json",
           ok=(0, 1))  # 1: layers fail the threshold, and the reports are written all the same
    return d


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def open_page(browser, path):
    """The page loaded from its file, with every console error, page error and outside request recorded."""
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    page.problems = []
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith("file://") else page.problems.append(f"request {r.url}"))
    page.goto(Path(path).resolve().as_uri())
    page.wait_for_selector("body[data-rendered='1']", timeout=15000)
    return page


def shoot(page, name, tmp_path):
    where = Path(os.environ.get("PARITY_SCREENSHOT_DIR") or tmp_path)
    where.mkdir(parents=True, exist_ok=True)
    path = where / name
    page.screenshot(path=str(path))
    assert path.stat().st_size > 20_000  # a drawn page, not a blank one
    return path


def column(page, key):
    idx = page.eval_on_selector_all("#layers thead th", "ths => ths.map(t => t.dataset.key)").index(key)
    return page.eval_on_selector_all("#layers tbody tr", f"trs => trs.map(t => t.children[{idx}].textContent)")


def num(text):
    return float(text.rstrip("%")) if text not in ("", "nan") else None


@pytest.mark.parametrize("name,shot", [("lenet.ort-int8", "html-report-lenet.png"),
                                       ("lenet.ort-fp16", None), ("encoder", "html-report-encoder.png")])
def test_page_renders_sorts_and_filters(reports, browser, name, shot, tmp_path):
    rep = json.loads((reports / f"{name}.json").read_text())
    page = open_page(browser, reports / f"{name}.html")
    try:
        # the verdict is at the top, and says what the report says
        assert page.inner_text("#verdict-badge") == ("PASS" if rep["passed"] else "FAIL")
        verdict = page.inner_text("#verdict")
        if rep["first_divergent"]:
            assert f"First divergence: {rep['first_divergent']}" in verdict
        if rep["summary"].get("culprits"):  # the verdict leads with culprit #1 of the report's one ranking
            assert f"Culprit: {rep['summary']['culprits'][0]}" in verdict
        # the plots drew: a point per layer value, a range bar per layer with a range, the histogram's cells
        scored = [l for l in rep["layers"] if "cosine" in l["values"]]
        local = [l for l in rep["layers"] if "cosine" in l["local"]]
        assert page.locator("#plot-depth circle.pt-accumulated").count() == len(scored)
        assert page.locator("#plot-depth circle.pt-local").count() == len(local) > 0
        assert page.locator("#plot-depth path.series-accumulated").count() == 1
        ranged = [l for l in rep["layers"] if (l["range"].get("ref") or {}).get("absmax") is not None]
        assert page.locator("#plot-range rect.range-bar").count() == len(ranged) > 0
        shown = page.eval_on_selector("#mag-layer", "s => s.value")
        h = next(l for l in rep["layers"] if l["name"] == shown)["range"]["error_vs_magnitude"]
        assert page.locator("#plot-magnitude rect.cell").count() == len(h["cells"]) + len(h["exact"]) + len(h["nonfinite"])
        culprits = rep["summary"].get("culprits") or []
        if any(l["name"] in culprits and l["range"].get("error_vs_magnitude") for l in rep["layers"]):
            assert "culprit" in page.inner_text("#mag-layer option:checked")
        assert page.locator("#layers tbody tr").count() == len(rep["layers"])
        if shot:
            shoot(page, shot, tmp_path)

        # sorting: the cosine column ascending, then descending; rows without a value stay last
        page.click("#layers th[data-key='m:cosine']")
        assert page.get_attribute("#layers th[data-key='m:cosine']", "aria-sort") == "ascending"
        vals = [num(t) for t in column(page, "m:cosine")]
        want = sorted(l["values"]["cosine"] for l in scored)
        assert [v for v in vals if v is not None] == pytest.approx(want, abs=1e-7)
        assert vals[:len(want)] == [v for v in vals if v is not None]  # empties after
        page.click("#layers th[data-key='m:cosine']")
        vals = [num(t) for t in column(page, "m:cosine")]
        assert [v for v in vals if v is not None] == pytest.approx(sorted(want, reverse=True), abs=1e-7)
        names = [t.strip() for t in page.eval_on_selector_all(
            "#layers tbody tr", "trs => trs.map(t => t.dataset.name)")]
        by = {l["name"]: l for l in rep["layers"]}
        assert [by[n]["values"].get("cosine") for n in names[:len(want)]] == sorted(want, reverse=True)  # rows moved

        # filtering: words must all appear; the count says how many rows are left
        op = scored[0]["op_type"]
        page.fill("#filter", op.lower())
        rows = page.eval_on_selector_all("#layers tbody tr", "trs => trs.map(t => t.dataset.name)")
        assert set(rows) == {l["name"] for l in rep["layers"] if op.lower() in
                             " ".join(str(l[k] or "") for k in ("name", "op_type", "target_op_type", "ref_name",
                                                                 "target_name", "status")).lower()
                             or op.lower() in " ".join(l["notes"]).lower()}
        assert page.inner_text("#count") == f"{len(rows)} of {len(rep['layers'])} layers"
        page.fill("#filter", "no-such-layer-anywhere")
        assert page.locator("#layers tbody tr").count() == 0
        page.fill("#filter", "")
        assert page.locator("#layers tbody tr").count() == len(rep["layers"])
        assert page.problems == []
    finally:
        page.close()


def test_a_verified_fix_and_hostile_names_render_as_text(browser, tmp_path):
    from parity import Activation
    from parity.core.engine import compare_streams
    from parity.core.report import write_report

    rng = np.random.default_rng(1)
    a = rng.standard_normal(256).astype(np.float32)
    hostile = "<img src=x onerror=alert(1)>"
    rep = compare_streams(iter([Activation(hostile, a, order=0)]), iter([Activation(hostile, a + 1, order=0)]),
                          ["cosine"], options={"ranges": True})
    rep.summary["fix"] = {"goal_metric": "cosine", "goal": 0.999, "before": 0.7, "after": 0.9995,
                          "before_text": "0.7000000", "after_text": "0.9995000", "passed": True,
                          "kept": [hostile], "total_layers": 1, "forms": {"parity config (TOML)": "[precision]"}}
    write_report(rep, "html", str(tmp_path / "fix.html"))
    page = open_page(browser, tmp_path / "fix.html")
    try:
        assert "Verified fix: keep 1 layer(s)" in page.inner_text("#fix")
        assert "0.7000000 \u2192 0.9995000" in page.inner_text("#fix")
        assert page.locator("img").count() == 0  # the name is text, never markup
        assert page.eval_on_selector("#layers tbody tr", "t => t.dataset.name") == hostile
        assert page.problems == []
    finally:
        page.close()


LAYOUT = """() => {
  const box = e => e.getBoundingClientRect();
  const inside = (a, b) => a.left >= b.left - 0.5 && a.right <= b.right + 0.5 && a.top >= b.top - 0.5 && a.bottom <= b.bottom + 0.5;
  const meets = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  const out = {clipped: [], over: []};
  document.querySelectorAll("#plots svg").forEach(svg => {
    const s = box(svg);
    svg.querySelectorAll("text").forEach(t => { if (!inside(box(t), s)) out.clipped.push(svg.id + ": " + t.textContent); });
  });
  const mag = document.getElementById("plot-magnitude");
  if (mag) {
    const cells = [...mag.querySelectorAll("rect.cell")].map(box);
    mag.querySelectorAll("text").forEach(t => { if (cells.some(c => meets(box(t), c))) out.over.push(t.textContent); });
  }
  return out;
}"""


@pytest.mark.parametrize("name", ["lenet.ort-int8", "lenet.ort-fp16", "encoder"])
def test_labels_stay_in_their_plot_off_the_cells_and_the_number_column_is_the_terminals(reports, browser, name):
    """No plot label is clipped by its SVG ("#3" at the right edge), none lies on the heatmap's cells
    ("float16 rounding", "error = |value|"), and the table's # is the terminal table's (execution order,
    blank for a row only one side has between two others)."""
    rep = json.loads((reports / f"{name}.json").read_text())
    page = open_page(browser, reports / f"{name}.html")
    try:
        # every layer the menu offers, not only the first one drawn
        for option in page.eval_on_selector_all("#mag-layer option", "os => os.map(o => o.value)"):
            page.select_option("#mag-layer", option)
            found = page.evaluate(LAYOUT)
            assert found == {"clipped": [], "over": []}, (option, found)
        if rep["summary"].get("culprits"):
            assert page.locator("#plot-depth text.culprit-label").count() > 0
        want = [str(int(l["order"])) if l["order"] == int(l["order"]) else "" for l in rep["layers"]]
        assert column(page, "i") == want
        assert page.problems == []
    finally:
        page.close()


def test_overflow_page_shows_the_culprit_first_and_its_consequences_under_it(browser, tmp_path):
    """tests/models/overflow.py vs torch-fp16: block.fc overflows. The depth plot draws its accumulated
    point failing (red, at the top), not its finite-part cosine error (~1e-7); the magnitude plot opens on
    culprit #1; each row grouped under it says so, and the word 'consequence' filters them."""
    model = ROOT / "tests" / "models" / "overflow.py"
    parity("compare", f"{model}:overflow_mlp", "--target", "torch-fp16", "--diagnose", "--workdir", tmp_path / "c",
           "-q", "--html", tmp_path / "o.html", "--json", tmp_path / "o.json", ok=(1,))
    rep = json.loads((tmp_path / "o.json").read_text())
    grouped = [l["name"] for l in rep["layers"] if l["caused_by"] == "block.fc"]
    assert rep["summary"]["culprits"][0] == "block.fc" and grouped
    page = open_page(browser, tmp_path / "o.html")
    try:
        i = next(k for k, l in enumerate(rep["layers"]) if l["name"] == "block.fc")
        pts = page.eval_on_selector_all("#plot-depth circle.pt-accumulated",
                                        "cs => cs.map(c => [+c.getAttribute('cy'), c.getAttribute('fill')])")
        top = min(cy for cy, _ in pts)
        cy, fill = pts[i]  # one point per scored row, in table order (every row of this report is scored)
        assert fill == "#c62828" and cy == top
        assert page.eval_on_selector("#mag-layer", "s => s.value") == "block.fc"
        assert "culprit #1" in page.inner_text("#mag-layer option:checked")
        assert "culprit #1" in page.inner_text(f"#layers tbody tr[data-name='block.fc']")
        for n in grouped:
            assert "grouped under culprit #1 block.fc" in page.inner_text(f"#layers tbody tr[data-name='{n}']")
        page.fill("#filter", "consequence")
        shown = page.eval_on_selector_all("#layers tbody tr", "trs => trs.map(t => t.dataset.name)")
        assert shown == grouped
        assert page.problems == []
    finally:
        page.close()
