/* chart.js: line charts drawn as our own SVG (no library): the loss and the
 * learning rate of a job, by step. */
'use strict';

/* About n round tick values covering [lo, hi]; the array's .step is their
 * spacing. */
function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  out.step = step;
  return out;
}

/* Draws series [{name, cls, points: [[x, y], ...], dots}] into svg (its
 * children replaced). opts: width, height (the viewBox), xlabel, empty (the
 * text without data), zero (the y axis starts at 0 at most), exp (y labels
 * in exponent form). */
function drawChart(svg, series, opts) {
  const W = opts.width || 640, H = opts.height || 260, L = 58, R = 12, T = 10, B = 34;
  fill(svg);
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    svg.append(svgEl('text', {x: W / 2, y: H / 2, 'text-anchor': 'middle', text: opts.empty || 'No data yet'}));
    return;
  }
  let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
  let y0 = Math.min(...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
  const pad = (y1 - y0) * 0.05;
  y0 -= pad; y1 += pad;
  if (opts.zero && y0 < 0) y0 = 0;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
  const yt = niceTicks(y0, y1, 5);
  const digits = Math.min(8, Math.max(0, -Math.floor(Math.log10(yt.step))));
  const big = Math.max(Math.abs(y0), Math.abs(y1));
  const sig = Math.min(6, Math.max(0, Math.floor(Math.log10(big)) - Math.floor(Math.log10(yt.step))));
  const yfmt = opts.exp ? ((v) => (v === 0 ? '0' : v.toExponential(sig))) : ((v) => v.toFixed(digits));
  for (const v of yt) {
    if (v < y0 || v > y1) continue;
    svg.append(svgEl('line', {className: 'gridline', x1: L, x2: W - R, y1: sy(v), y2: sy(v)}),
      svgEl('text', {x: L - 6, y: sy(v) + 4, 'text-anchor': 'end', text: yfmt(v)}));
  }
  for (const v of niceTicks(x0, x1, 6)) {
    if (v < x0 || v > x1 || v !== Math.round(v)) continue;
    svg.append(svgEl('text', {x: sx(v), y: H - B + 16, 'text-anchor': 'middle', text: String(v)}));
  }
  svg.append(svgEl('line', {className: 'axis', x1: L, x2: L, y1: T, y2: H - B}),
    svgEl('line', {className: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B}),
    svgEl('text', {x: (L + W - R) / 2, y: H - 4, 'text-anchor': 'middle', text: opts.xlabel || 'step'}));
  for (const s of series) {
    if (!s.points.length) continue;
    const pts = s.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(' ');
    svg.append(svgEl('polyline', {className: `s-${s.cls}`, points: pts, 'data-series': s.cls}));
    if (s.points.length <= 200 || s.dots) {
      const g = svgEl('g', {'data-points': s.cls});
      for (const p of s.points)
        g.append(svgEl('circle', {className: `p-${s.cls}`, cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: 2.2},
          svgEl("title", {text: `${s.name} at step ${p[0]}: ${Number(p[1]).toPrecision(5)}`})));
      svg.append(g);
    }
  }
}
