"""The HTML report's stylesheet and renderer, inlined into every page (no third-party code, no CDN).

The renderer reads the JSON block ``#parity-data`` written by :mod:`.html_report` and draws three
SVG plots and the layer table with plain DOM calls; text from the report only ever reaches the
page through ``textContent``, never as markup.
"""

CSS = """
:root{--fg:#1d2330;--mut:#5b6475;--bd:#d7dbe3;--bad:#c62828;--warn:#b26a00;--ok:#2e7d32;--acc:#1f5fbf;--loc:#e0701a}
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
margin:0;padding:18px 24px;background:#f7f8fa}h1{font-size:20px;margin:0 0 8px}h2{font-size:16px;margin:18px 0 6px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:13px;color:#fff;margin-left:8px;vertical-align:2px}
.badge.pass{background:var(--ok)}.badge.fail{background:var(--bad)}
.card{background:#fff;border:1px solid var(--bd);border-radius:6px;padding:10px 14px;margin:10px 0}
.verdict ul{margin:4px 0;padding-left:18px}.verdict li.key{font-weight:600}.fix{border-left:4px solid var(--ok)}
.fix.none{border-left-color:var(--bad)}pre{background:#f1f3f6;padding:6px 8px;overflow:auto;font-size:12px;margin:4px 0}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:10px}
figure{margin:0}figcaption{color:var(--mut);font-size:12.5px;margin-top:4px}svg{display:block;width:100%;height:auto;background:#fff}
svg text{font:11px system-ui,sans-serif;fill:var(--mut)}svg text.halo{paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}svg .grid{stroke:#eceff3}svg .axis{stroke:#9aa3b2;fill:none}
.legend span{display:inline-block;margin-right:12px;font-size:12px}.legend i{display:inline-block;width:14px;height:3px;
margin-right:4px;vertical-align:middle}.note{color:var(--mut);font-style:italic}
.tools{display:flex;gap:12px;align-items:center;margin:6px 0}#filter{width:320px;padding:4px 8px;border:1px solid var(--bd);border-radius:4px}
table{border-collapse:collapse;width:100%;background:#fff;font-size:12.5px}th,td{border-bottom:1px solid #edf0f4;padding:3px 6px;text-align:left;white-space:nowrap}
th{position:sticky;top:0;background:#eef1f6;cursor:pointer;user-select:none}th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.fail td{background:#fff8e1}tr.first td{background:#ffebee}tr.culprit td:first-child{box-shadow:inset 4px 0 var(--bad)}
tr.flash td{background:#e3f2fd}td .pair{color:var(--mut);font-size:11.5px}.tag{color:var(--bad);font-weight:600}
select{padding:2px 4px}.tablewrap{overflow-x:auto;max-height:80vh}td.w{white-space:normal;min-width:180px;max-width:380px}
"""

JS = r"""
(function () {
"use strict";
var D = JSON.parse(document.getElementById("parity-data").textContent);
var NS = "http://www.w3.org/2000/svg";
var LOG4 = Math.log10(4);
function num(v) {
  if (v === null || v === undefined) return null;
  if (v === "nan") return NaN;
  if (v === "inf") return Infinity;
  if (v === "-inf") return -Infinity;
  return v;
}
function el(tag, attrs, parent, text) {
  var e = document.createElement(tag);
  for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (parent) parent.appendChild(e);
  return e;
}
function sv(tag, attrs, parent, text) {
  var e = document.createElementNS(NS, tag);
  for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (parent) parent.appendChild(e);
  return e;
}
function tip(node, text) { sv("title", {}, node, text); return node; }
function pow10(e) {
  if (e === 0) return "1";
  if (e > -4 && e < 5) return String(Math.pow(10, e).toPrecision(1) * 1);
  return "1e" + e;
}
// a format's largest value in full where it is short (fp16's 65504, not 4 digits' 65500)
function fmax(v) { return v < 1e7 ? String(v) : fmt(v); }
function fmt(v) {
  if (v === null || v === undefined) return "";
  if (!isFinite(v)) return String(v);
  return Number(v.toPrecision(4)).toString();
}

// --- a plot frame: linear x (layer index) or log x, log10 y; returns pixel mappers ---------------
function frame(parent, o) {
  var W = 640, H = o.h || 280, L = 58, R = o.R || 14, T = 14, B = 38;
  var svg = sv("svg", {viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": o.label, "class": "plot"}, parent);
  var pw = W - L - R, ph = H - T - B;
  var x0 = o.x[0], x1 = o.x[1] === o.x[0] ? o.x[0] + 1 : o.x[1];
  var y0 = o.y[0], y1 = o.y[1] === o.y[0] ? o.y[0] + 1 : o.y[1];
  var f = {
    svg: svg, L: L, T: T, pw: pw, ph: ph,
    px: function (x) { return L + (x - x0) / (x1 - x0) * pw; },
    py: function (y) { return T + ph - (Math.min(Math.max(y, y0), y1) - y0) / (y1 - y0) * ph; },
    top: T, bottom: T + ph
  };
  var id = "c" + Math.random().toString(36).slice(2);
  var cp = sv("clipPath", {id: id}, sv("defs", {}, svg));
  sv("rect", {x: L, y: T, width: pw, height: ph}, cp);
  var ystep = Math.max(1, Math.ceil((y1 - y0) / 8));
  for (var e = Math.ceil(y0); e <= y1; e += ystep) {
    sv("line", {x1: L, x2: L + pw, y1: f.py(e), y2: f.py(e), "class": "grid"}, svg);
    sv("text", {x: L - 6, y: f.py(e) + 4, "text-anchor": "end"}, svg, o.ylog === false ? fmt(e) : pow10(e));
  }
  if (o.xlog) {
    var xstep = Math.max(1, Math.ceil((x1 - x0) / 10));
    for (var k = Math.ceil(x0); k <= x1; k += xstep) {
      sv("line", {x1: f.px(k), x2: f.px(k), y1: T, y2: T + ph, "class": "grid"}, svg);
      sv("text", {x: f.px(k), y: T + ph + 14, "text-anchor": "middle"}, svg, pow10(k));
    }
  } else {
    var span = x1 - x0, step = Math.max(1, Math.pow(10, Math.floor(Math.log10(span / 2 || 1))));
    if (span / step > 10) step *= (span / step > 25 ? 5 : 2);
    for (var t = Math.ceil(x0 / step) * step; t <= x1; t += step) {
      sv("line", {x1: f.px(t), x2: f.px(t), y1: T + ph, y2: T + ph + 4, "class": "axis"}, svg);
      sv("text", {x: f.px(t), y: T + ph + 14, "text-anchor": "middle"}, svg, t);
    }
  }
  sv("rect", {x: L, y: T, width: pw, height: ph, "class": "axis"}, svg);
  sv("text", {x: L + pw / 2, y: H - 6, "text-anchor": "middle"}, svg, o.xlabel);
  sv("text", {x: 12, y: T + ph / 2, "text-anchor": "middle", transform: "rotate(-90 12 " + (T + ph / 2) + ")"}, svg, o.ylabel);
  f.g = sv("g", {"clip-path": "url(#" + id + ")"}, svg);
  return f;
}
function logDomain(vals, extra) {
  var lo = Infinity, hi = -Infinity;
  vals.concat(extra || []).forEach(function (v) {
    if (v !== null && isFinite(v) && v > 0) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  });
  if (lo === Infinity) return [-1, 0];
  var a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
  return [a, b > a ? b : a + 1];
}
function legend(parent, items) {
  var d = el("div", {"class": "legend"}, parent);
  items.forEach(function (it) {
    var s = el("span", {}, d);
    el("i", {style: "background:" + it[1]}, s);
    s.appendChild(document.createTextNode(it[0]));
  });
}
function figure(parent, title, caption) {
  var f = el("figure", {"class": "card"}, parent);
  el("h2", {}, f, title);
  var body = el("div", {}, f);
  el("figcaption", {}, f, caption);
  return body;
}

var P = D.metrics[0] || {name: "metric"};
var rows = D.rows;
// plots along depth use a row's execution order, the number in the table's # column (as the terminal's)
var X = (function () {
  var o = rows.map(function (r) { return r.order; });
  var a = o.length ? Math.min.apply(null, o) : 0, z = o.length ? Math.max.apply(null, o) : 1;
  return [a, z > a ? z : a + 1];
})();
function tag(r) { return r.num !== "" ? "#" + r.num + " " : ""; }

// --- verdict ---------------------------------------------------------------------------------------
var app = document.getElementById("app");
var h1 = el("h1", {}, app, D.ref + " vs " + D.target);
el("span", {"class": "badge " + (D.passed ? "pass" : "fail"), id: "verdict-badge"}, h1, D.passed ? "PASS" : "FAIL");
var vc = el("section", {"class": "card verdict", id: "verdict"}, app);
var ul = el("ul", {}, vc);
D.verdict.forEach(function (line) {
  var key = /^(First divergence|Culprit|First NaN|Reference values exceed)/.test(line);
  el("li", key ? {"class": "key"} : {}, ul, line);
});
var fixBox = el("section", {"class": "card fix", id: "fix"}, app);
if (D.fix) {
  var F = D.fix;
  if (F.passed) {
    el("strong", {}, fixBox, "Verified fix: keep " + F.kept.length + " layer(s) at higher precision; output " +
       F.goal_metric + " " + F.before_text + " \u2192 " + F.after_text + " (goal " + F.goal + ", re-measured).");
    el("div", {}, fixBox, "Kept: " + F.kept.join(", "));
    Object.keys(F.forms || {}).forEach(function (k) {
      var det = el("details", {}, fixBox);
      el("summary", {}, det, k);
      el("pre", {}, det, F.forms[k]);
    });
  } else {
    fixBox.className += " none";
    el("strong", {}, fixBox, "No verified fix: keeping " + F.kept.length + " layer(s) reached " + F.goal_metric +
       " " + F.after_text + ", short of " + F.goal + " (from " + F.before_text + ").");
  }
} else if (!D.passed) {
  fixBox.className += " none";
  el("span", {}, fixBox, "No fix searched for this run: 'parity fix' (same model and sources) finds layers to " +
     "keep in fp32 and verifies them; its --html report shows the result here.");
} else {
  fixBox.remove();
}

var plots = el("section", {"class": "plots", id: "plots"}, app);

// --- 1. accumulated vs local error along depth ---------------------------------------------------------
(function () {
  var body = figure(plots, "Error along depth: accumulated vs local (" + P.name + ")",
    "Accumulated: the target run end to end (each layer inherits what came before). Local: the layer " +
    "alone in the target, fed the reference's inputs (--diagnose). A layer whose local error is as high " +
    "as its accumulated one causes the loss; error = the metric's own error (" + P.name + ": lower is better here).");
  var acc = rows.map(function (r) { return num(r.acc); }), loc = rows.map(function (r) { return num(r.loc); });
  var yd = logDomain(acc.concat(loc), [num(P.thre)]);
  var f = frame(body, {x: X, y: yd, xlabel: "layer (execution order, table #)",
                       ylabel: P.name + " error", label: "error along depth", h: 300});
  f.svg.id = "plot-depth";
  var thr = num(P.thre);
  if (thr !== null && isFinite(thr) && thr > 0) {
    sv("line", {x1: f.L, x2: f.L + f.pw, y1: f.py(Math.log10(thr)), y2: f.py(Math.log10(thr)), stroke: "#888",
                "stroke-dasharray": "5 4"}, f.g);
    sv("text", {x: f.L + f.pw - 4, y: f.py(Math.log10(thr)) - 4, "text-anchor": "end", "class": "halo"}, f.svg,
       "threshold " + P.thrf);
  }
  var firstIdx = rows.findIndex(function (r) { return r.name === D.first; });
  if (firstIdx >= 0) {
    sv("line", {x1: f.px(rows[firstIdx].order), x2: f.px(rows[firstIdx].order), y1: f.top, y2: f.bottom, stroke: "#c62828",
                "stroke-dasharray": "2 3"}, f.g);
  }
  function y(v) { return v === null ? null : (!isFinite(v) || isNaN(v) ? yd[1] : v <= 0 ? yd[0] : Math.log10(v)); }
  [[acc, "#1f5fbf", "accumulated", ""], [loc, "#e0701a", "local", "6 4"]].forEach(function (s) {
    var d = "", pen = false;
    s[0].forEach(function (v, i) {
      var yy = y(v);
      if (yy === null) return;  // a row without this value: the line passes over it
      d += (pen ? "L" : "M") + f.px(rows[i].order).toFixed(1) + " " + f.py(yy).toFixed(1);
      pen = true;
    });
    if (d) sv("path", {d: d, fill: "none", stroke: s[1], "stroke-width": 1.6, "stroke-dasharray": s[3],
                       "class": "series series-" + s[2]}, f.g);
    s[0].forEach(function (v, i) {
      var yy = y(v);
      if (yy === null) return;
      var r = rows[i], bad = !isFinite(v) || isNaN(v);
      var c = sv("circle", {cx: f.px(r.order), cy: f.py(yy), r: rows.length > 300 ? 1.6 : 3,
                            fill: bad ? "#c62828" : s[1], "class": "pt pt-" + s[2]}, f.g);
      c.addEventListener("click", function () { focusRow(r.name); });
      tip(c, tag(r) + r.name + " (" + (r.op || "layer") + ")\n" + s[2] + " " + P.name + ": " +
          (s[2] === "local" ? r.locf : r.v[0][1]) + (bad ? " (NaN/Inf)" : ""));
    });
  });
  rows.forEach(function (r, i) {
    if (!r.culprit) return;
    var v = y(loc[i] !== null ? loc[i] : acc[i]);
    if (v === null) return;
    var cx = f.px(r.order), cy = f.py(v);
    sv("circle", {cx: cx, cy: cy, r: 7, fill: "none", stroke: "#c62828", "stroke-width": 2,
                  "class": "culprit-mark"}, f.g);
    // the label stays inside the frame: left of the ring near the right edge, under it near the top
    var right = cx > f.L + f.pw - 30;
    tip(sv("text", {x: right ? cx - 9 : cx + 9, y: cy - 8 < f.top + 10 ? cy + 18 : cy - 8, fill: "#c62828",
                    "text-anchor": right ? "end" : "start", "class": "halo culprit-label"}, f.svg, "#" + r.culprit),
        "culprit #" + r.culprit + ": " + r.name);
  });
  var items = [["accumulated", "#1f5fbf"]];
  if (loc.some(function (v) { return v !== null; })) items.push(["local (layer alone)", "#e0701a"]);
  else el("div", {"class": "note"}, body, "No local errors in this report: run compare with --diagnose.");
  items.push(["culprit", "#c62828"]);
  legend(body, items);
})();

// --- 2. value range of each layer against the target format ------------------------------------------
(function () {
  var body = figure(plots, "Value range per layer vs the target format" + (D.format ? " (" + D.format + ")" : ""),
    "Bar: the reference's rms up to its largest magnitude (|max|), per layer. " +
    (D.format_max ? "Red line: the largest finite " + D.format + " value; a bar above it overflows. " : "") +
    (D.format === "int8" ? "Purple: a per-tensor int8 step (|max|/127); a step near the rms leaves most values a few levels. " : "") +
    "Orange: a range risk, red: overflow.");
  var have = rows.filter(function (r) { return num(r.absmax) !== null; });
  if (!have.length) {
    el("div", {"class": "note"}, body, "No value ranges in this report: run compare with --diagnose.");
    return;
  }
  var vals = [];
  have.forEach(function (r) { vals.push(num(r.absmax), num(r.rms), num(r.tabsmax)); });
  if (D.format === "int8") have.forEach(function (r) { vals.push(num(r.absmax) / 127); });
  var fm = num(D.format_max);
  var yd = logDomain(vals, fm !== null && fm < 1e30 ? [fm] : []);
  var f = frame(body, {x: X, y: yd, xlabel: "layer (execution order, table #)",
                       ylabel: "|value|", label: "value range per layer", h: 300});
  f.svg.id = "plot-range";
  var lg = function (v) { return v > 0 ? Math.log10(v) : yd[0]; };
  if (fm !== null && Math.log10(fm) <= yd[1]) {
    sv("line", {x1: f.L, x2: f.L + f.pw, y1: f.py(Math.log10(fm)), y2: f.py(Math.log10(fm)), stroke: "#c62828",
                "stroke-width": 1.5}, f.g);
    sv("text", {x: f.L + 4, y: f.py(Math.log10(fm)) - 4, "class": "halo"}, f.svg, D.format + " max " + fmax(fm));
  }
  var w = Math.max(1.5, Math.min(10, f.pw / rows.length * 0.6));
  have.forEach(function (r) {
    var mx = num(r.absmax), rms = num(r.rms), over = fm !== null && mx > fm;
    var col = over ? "#c62828" : r.risk ? "#b26a00" : "#1f5fbf";
    var bar = sv("rect", {x: f.px(r.order) - w / 2, y: f.py(lg(mx)), width: w,
                          height: Math.max(1, f.py(lg(rms || mx)) - f.py(lg(mx))), fill: col, opacity: 0.8,
                          "class": "range-bar"}, f.g);
    bar.addEventListener("click", function () { focusRow(r.name); });
    tip(bar, tag(r) + r.name + "\n|max| " + fmt(mx) + ", rms " + fmt(rms) +
        (r.tabsmax !== null ? "; target |max| " + fmt(num(r.tabsmax)) : "") + (r.risk ? "\n" + r.risk : ""));
    if (D.format === "int8" && mx > 0) {
      sv("rect", {x: f.px(r.order) - w / 2, y: f.py(lg(mx / 127)) - 1, width: w, height: 2, fill: "#7b1fa2"}, f.g);
    }
  });
  var items = [["reference rms \u2026 |max|", "#1f5fbf"], ["range risk", "#b26a00"], ["overflow / format max", "#c62828"]];
  if (D.format === "int8") items.push(["int8 step", "#7b1fa2"]);
  legend(body, items);
})();

// --- 3. error vs magnitude for the culprit (and the other layers that explain the loss) --------------
(function () {
  var names = Object.keys(D.hist);
  var body = figure(plots, "Error vs magnitude",
    "Every element of the layer (all inputs), binned by |reference| (x) and |target \u2212 reference| (y) in powers " +
    "of 4; darker = more elements. Top strip: NaN/Inf in the target (overflow shows at the largest |x|); bottom " +
    "strip: exact. Diagonals: error = 100% of the value (values lost, e.g. to a blown int8 scale)" +
    (D.rounding ? ", and the " + D.format + " rounding step" : "") + ". Accumulated error of the end-to-end run.");
  if (!names.length) {
    el("div", {"class": "note"}, body, "No error-vs-magnitude data in this report: run compare with --diagnose.");
    return;
  }
  var role = {};
  D.culprits.forEach(function (n, k) { role[n] = role[n] || "culprit #" + (k + 1); });
  if (D.first && !role[D.first]) role[D.first] = "first divergence";
  var bar = el("div", {"class": "tools"}, body);
  el("label", {"for": "mag-layer"}, bar, "Layer:");
  var sel = el("select", {id: "mag-layer"}, bar);
  names.forEach(function (n) { el("option", {value: n}, sel, n + (role[n] ? " (" + role[n] + ")" : "")); });
  var holder = el("div", {}, body);
  function draw(name) {
    holder.textContent = "";
    var h = D.hist[name], b = Math.log10(h.base || 4);
    var xs = [], ys = [], maxn = 1;
    h.cells.forEach(function (c) { xs.push(c[0]); ys.push(c[1]); maxn = Math.max(maxn, c[2]); });
    h.exact.concat(h.nonfinite).forEach(function (c) { xs.push(c[0]); maxn = Math.max(maxn, c[1]); });
    var xlo = (Math.min.apply(null, xs) - 1) * b, xhi = Math.max.apply(null, xs) * b;
    var ylo = ys.length ? (Math.min.apply(null, ys) - 1) * b : xlo, yhi = ys.length ? Math.max.apply(null, ys) * b : xhi;
    // two strips: one bin below for "exact", one above for "NaN/Inf"
    var f = frame(holder, {x: [xlo, xhi], y: [ylo - b, yhi + b], xlog: true, xlabel: "|reference value|",
                           ylabel: "|error|", label: "error vs magnitude of " + name, h: 320, R: 56});
    f.svg.id = "plot-magnitude";
    var shade = function (n, hue) {
      var t = Math.log(1 + n) / Math.log(1 + maxn);
      return "hsl(" + hue + ",75%," + (92 - 62 * t).toFixed(0) + "%)";
    };
    function cell(x, ybot, ytop, n, hue, text) {
      var r = sv("rect", {x: f.px((x - 1) * b), y: f.py(ytop), width: Math.max(1, f.px(x * b) - f.px((x - 1) * b)),
                          height: Math.max(1, f.py(ybot) - f.py(ytop)), fill: shade(n, hue), "class": "cell"}, f.g);
      tip(r, text + ": " + n + " element" + (n === 1 ? "" : "s"));
    }
    var rng = function (k) { return "[" + fmt(Math.pow(4, k - 1)) + ", " + fmt(Math.pow(4, k)) + ")"; };
    h.cells.forEach(function (c) {
      cell(c[0], (c[1] - 1) * b, c[1] * b, c[2], 215, "|ref| in " + rng(c[0]) + ", |error| in " + rng(c[1]));
    });
    h.exact.forEach(function (c) { cell(c[0], ylo - b, ylo, c[1], 140, "|ref| in " + rng(c[0]) + ", exact"); });
    h.nonfinite.forEach(function (c) { cell(c[0], yhi, yhi + b, c[1], 0, "|ref| in " + rng(c[0]) + ", target NaN/Inf"); });
    [[ylo, "#9aa3b2"], [yhi, "#9aa3b2"]].forEach(function (s) {
      sv("line", {x1: f.L, x2: f.L + f.pw, y1: f.py(s[0]), y2: f.py(s[0]), stroke: s[1]}, f.g);
    });
    // labels never sit on the cells: the strips are named in the right margin, the guides in a legend
    sv("text", {x: f.L + f.pw + 5, y: (f.py(yhi + b) + f.py(yhi)) / 2 + 4, fill: "#c62828", "class": "strip-label"},
       f.svg, "NaN/Inf");
    sv("text", {x: f.L + f.pw + 5, y: (f.py(ylo) + f.py(ylo - b)) / 2 + 4, "class": "strip-label"}, f.svg, "exact");
    var guides = [[0, "#c62828", "error = |value|"]], keys = [];
    if (D.rounding) guides.push([Math.log10(D.rounding), "#2e7d32", D.format + " rounding"]);
    guides.forEach(function (g) {
      // error = k * |value|: a diagonal in log-log, drawn where it lies inside the error bins
      var a = Math.max(xlo, ylo - g[0]), z = Math.min(xhi, yhi - g[0]);
      if (z <= a) return;
      sv("line", {x1: f.px(a), y1: f.py(a + g[0]), x2: f.px(z), y2: f.py(z + g[0]), stroke: g[1],
                  "stroke-dasharray": "5 4", "stroke-width": 1.3}, f.g);
      keys.push([g[2] + " (dashed)", g[1]]);
    });
    var fm = num(D.format_max);
    if (fm !== null && Math.log10(fm) > xlo && Math.log10(fm) < xhi) {
      sv("line", {x1: f.px(Math.log10(fm)), x2: f.px(Math.log10(fm)), y1: f.top, y2: f.bottom, stroke: "#c62828",
                  "stroke-width": 1.5}, f.g);
      keys.push([D.format + " max " + fmax(fm) + " (vertical line)", "#c62828"]);
    }
    keys.push(["exact (bottom strip)", "hsl(140,75%,45%)"], ["NaN/Inf (top strip)", "hsl(0,75%,45%)"]);
    legend(holder, keys);
  }
  sel.addEventListener("change", function () { draw(sel.value); });
  draw(names[0]);
})();

// --- the layer table: click a header to sort, type to filter -------------------------------------------
// a consequence is shown under its culprit, by the culprit's place in the report's one ranking
function ofCulprit(name) { var k = D.culprits.indexOf(name); return (k >= 0 ? "#" + (k + 1) + " " : "") + name; }
var cols = [
  {key: "i", label: "#", num: true, get: function (r) { return r.i; }, show: function (r) { return r.num; }},
  {key: "name", label: "layer", get: function (r) { return r.name; }},
  {key: "op", label: "op", get: function (r) { return r.op; }},
  {key: "shape", label: "shape", num: true, get: function (r) {
    return r.shape ? r.shape.split("x").reduce(function (a, b) { return a * b; }, 1) : null; },
   show: function (r) { return r.shape; }},
  {key: "status", label: "status", get: function (r) { return r.status; }},
  {key: "culprit", label: "culprit", num: true, get: function (r) { return r.culprit; },
   show: function (r) { return r.culprit ? "#" + r.culprit : r.cb ? "\u21B3 " + ofCulprit(r.cb) : ""; }}
];
D.metrics.forEach(function (m, k) {
  cols.push({key: "m:" + m.name, label: m.name + (D.multi ? " worst" : "") + (m.thrf ? " (" + (m.hib ? "\u2265" : "\u2264") + m.thrf + ")" : ""),
             num: true, get: function (r) { return num(r.v[k][0]); }, show: function (r) { return r.v[k][1]; }});
});
if (rows.some(function (r) { return r.loc !== null; })) {
  cols.push({key: "local", label: "local " + P.name, num: true,
             get: function (r) { return num(r.locv); },
             show: function (r) { return r.locf + (r.newnf ? " NaN/Inf" : ""); }});
}
if (rows.some(function (r) { return r.absmax !== null; })) {
  cols.push({key: "absmax", label: "ref |max|", num: true, get: function (r) { return num(r.absmax); },
             show: function (r) { return r.absmax === null ? "" : fmt(num(r.absmax)); }});
}
if (rows.some(function (r) { return r.risk; })) cols.push({key: "risk", label: "range", wrap: true, get: function (r) { return r.risk; }});
if (rows.some(function (r) { return r.notes; })) cols.push({key: "notes", label: "notes", wrap: true, get: function (r) { return r.notes; }});

var sec = el("section", {"class": "card", id: "layers-section"}, app);
el("h2", {}, sec, "Layers");
var tools = el("div", {"class": "tools"}, sec);
var filt = el("input", {id: "filter", type: "search", placeholder: "filter: words in name, op, status, range, notes", "aria-label": "filter layers"}, tools);
var count = el("span", {id: "count"}, tools);
el("span", {"class": "note"}, tools, "click a column to sort; words: failing, culprit, consequence, first");
var table = el("table", {id: "layers"}, el("div", {"class": "tablewrap"}, sec));
var hr = el("tr", {}, el("thead", {}, table));
var tbody = el("tbody", {}, table);
var trs = rows.map(function (r) {
  var tr = el("tr", {"data-name": r.name, "data-i": r.i});
  if (r.failing) tr.className += " fail";
  if (r.name === D.first) tr.className += " first";
  if (r.culprit) tr.className += " culprit";
  cols.forEach(function (c) {
    var td = el("td", c.num ? {"class": "n"} : c.wrap ? {"class": "w"} : {}, tr, (c.show || c.get)(r));
    if (c.key === "name") {
      if (r.pair) el("div", {"class": "pair"}, td, r.pair);
      if (r.name === D.first) el("span", {"class": "tag"}, td, " \u25C0 first divergence");
      if (r.culprit) el("span", {"class": "tag"}, td, " \u25C0 culprit #" + r.culprit);
      else if (r.cb) el("span", {"class": "tag"}, td, " \u21B3 grouped under culprit " + ofCulprit(r.cb));
    }
  });
  tr._search = [r.name, r.pair, r.op, r.status, r.risk, r.notes, r.failing ? "failing" : "",
                r.culprit ? "culprit" : "", r.cb ? "consequence " + r.cb : "",
                r.name === D.first ? "first" : ""].join(" ").toLowerCase();
  return tr;
});
var order = trs.slice(), sortKey = null, sortDir = 1;
function render() {
  var words = filt.value.toLowerCase().split(/\s+/).filter(Boolean), shown = 0;
  tbody.textContent = "";
  order.forEach(function (tr) {
    var ok = words.every(function (w) { return tr._search.indexOf(w) >= 0; });
    if (ok) { tbody.appendChild(tr); shown++; }
  });
  count.textContent = shown + " of " + rows.length + " layers";
}
function cmp(c) {
  return function (a, b) {
    var x = c.get(rows[a.getAttribute("data-i")]), y = c.get(rows[b.getAttribute("data-i")]);
    var xm = x === null || x === "" || (c.num && isNaN(x)), ym = y === null || y === "" || (c.num && isNaN(y));
    if (xm || ym) return xm === ym ? 0 : xm ? 1 : -1;  // no value: last, whichever the direction
    if (c.num) return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
    return String(x).localeCompare(String(y)) * sortDir;
  };
}
cols.forEach(function (c) {
  var th = el("th", {"data-key": c.key, scope: "col", title: "sort by " + c.label}, hr, c.label);
  th.addEventListener("click", function () {
    sortDir = sortKey === c.key ? -sortDir : 1;
    sortKey = c.key;
    hr.querySelectorAll("th").forEach(function (t) { t.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", sortDir > 0 ? "ascending" : "descending");
    order = trs.slice().sort(function (a, b) {  // stable: ties keep execution order
      return cmp(c)(a, b) || (a.getAttribute("data-i") - b.getAttribute("data-i"));
    });
    render();
  });
});
filt.addEventListener("input", render);
function focusRow(name) {
  var tr = trs.find(function (t) { return t.getAttribute("data-name") === name; });
  if (!tr) return;
  if (!tr.parentNode) { filt.value = ""; render(); }
  tr.scrollIntoView({block: "center"});
  tr.classList.add("flash");
  setTimeout(function () { tr.classList.remove("flash"); }, 1200);
}
render();
document.body.setAttribute("data-rendered", "1");
})();
"""
