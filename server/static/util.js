/* util.js: the dashboard's small helpers, shared by every page: DOM building
 * (el, fill; every text from the API is set with textContent, never parsed
 * as HTML), number and time formats, the toast, status badges and progress
 * bars. Loaded first; the dashboard's scripts share one global scope (plain
 * scripts, no modules, no build step) and index.html loads them in order:
 * util.js, api.js, chart.js, models.js, jobs.js, job.js, live.js, new.js,
 * playground.js, app.js. */
'use strict';

const TERMINAL = ['succeeded', 'failed', 'cancelled'];
const STATUSES = ['validating_files', 'queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled'];
const SVG_TAGS = ['svg', 'path', 'line', 'text', 'circle', 'g', 'polyline', 'title'];

/* A new element: attrs {text, className, onEVENT: handler, name: value}
 * (null, undefined and false values are skipped, true is an empty
 * attribute), then its children (nodes or strings; nested arrays flattened).
 * attrs.svg makes it an SVG element. */
function el(tag, attrs, ...kids) {
  const e = document.createElementNS(SVG_TAGS.includes(tag) && attrs && attrs.svg
    ? 'http://www.w3.org/2000/svg' : 'http://www.w3.org/1999/xhtml', tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'svg' || v === null || v === undefined || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'className') e.setAttribute('class', v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const k of kids.flat(Infinity)) {
    if (k === null || k === undefined || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}
const svgEl = (tag, attrs, ...kids) => el(tag, Object.assign({svg: true}, attrs), ...kids);

/* Replaces node's children (null, undefined and false are skipped). */
function fill(node, ...kids) {
  node.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
}

/* ---- formats: '—' for a value the API has not given ------------------------- */

function fmtTime(t) {
  if (!t) return '—';
  const d = new Date(t * 1000);
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
function fmtDur(s) {
  if (s === null || s === undefined || !isFinite(s) || s < 0) return '—';
  s = Math.round(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}
function fmtNum(x, digits) {
  if (x === null || x === undefined || !isFinite(x)) return '—';
  return Number(x).toFixed(digits === undefined ? 4 : digits);
}
function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${u[i]}`;
}
function fmtLr(x) { return x === null || x === undefined ? '—' : Number(x).toExponential(2); }

function randomId() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

/* ---- shared widgets ------------------------------------------------------------- */

let toastTimer = 0;
function toast(msg) {
  const t = document.getElementById('toast');
  t.textContent = msg;
  t.classList.add('show');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => t.classList.remove('show'), 3500);
}

function badge(status) { return el('span', {className: `badge ${status}`, text: status.replace('_', ' ')}); }

function progressBar(p, status) {
  const pct = p && p.total_steps ? Math.min(100, (100 * p.step) / p.total_steps) : (status === 'succeeded' ? 100 : 0);
  const bar = el('span');
  bar.style.width = `${pct.toFixed(1)}%`;
  return el('div', {className: `progress${status === 'succeeded' ? ' done' : ''}`, role: 'progressbar',
    'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(pct),
    'aria-label': p && p.total_steps ? `step ${p.step} of ${p.total_steps}` : 'not started'}, bar);
}

function errorBox(e) {
  return el('div', {className: 'alert', role: 'alert', text: e.message || String(e)});
}
