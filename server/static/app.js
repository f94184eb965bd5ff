/* deltatune dashboard: plain JavaScript, no dependencies, no build step.
 * Hash routes: #/jobs, #/jobs/<id>, #/new, #/models. The API key lives in
 * sessionStorage (this tab only) and goes in the Authorization header of
 * every call; downloads are fetched with it and saved from a Blob. Every
 * text from the API is set with textContent (never parsed as HTML). */
'use strict';

(function () {
  const KEY = 'deltatune.key';
  const main = document.getElementById('main');
  const TERMINAL = ['succeeded', 'failed', 'cancelled'];
  const STATUSES = ['validating_files', 'queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled'];
  let page = null; /* {cleanup()} of the page on screen */

  /* ---- small helpers ----------------------------------------------------------- */

  function el(tag, attrs, ...kids) {
    const e = document.createElementNS(
      ['svg', 'path', 'line', 'text', 'circle', 'g', 'polyline', 'title'].includes(tag) &&
        attrs && attrs.svg ? 'http://www.w3.org/2000/svg' : 'http://www.w3.org/1999/xhtml', tag);
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
  /* Replaces node's children (null, undefined and false are skipped). */
  function fill(node, ...kids) {
    node.replaceChildren(...kids.flat(Infinity).filter((k) => k !== null && k !== undefined && k !== false));
  }
  const svgEl = (tag, attrs, ...kids) => el(tag, Object.assign({svg: true}, attrs), ...kids);

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

  /* ---- the API ---------------------------------------------------------------- */

  class ApiError extends Error {
    constructor(status, body) {
      const e = (body && body.error) || {};
      super(e.message || `HTTP ${status}`);
      this.status = status;
      this.param = e.param || null;
      this.code = e.code || null;
    }
  }

  function key() { return sessionStorage.getItem(KEY); }

  async function api(method, path, opts) {
    opts = opts || {};
    const headers = Object.assign({Authorization: `Bearer ${opts.key || key()}`}, opts.headers || {});
    let body = opts.body;
    if (opts.json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(opts.json);
    }
    if (method === 'POST' && !headers['Idempotency-Key']) headers['Idempotency-Key'] = randomId();
    let resp;
    try {
      resp = await fetch(path, {method, headers, body, signal: opts.signal, cache: 'no-store'});
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, {error: {message: `the server did not answer (${e.message})`}});
    }
    let data = null;
    const text = await resp.text();
    if (text) { try { data = JSON.parse(text); } catch (e) { data = null; } }
    if (!resp.ok) {
      const err = new ApiError(resp.status, data);
      if (resp.status === 401 && !opts.key) signOut('Your API key was refused; sign in again.');
      throw err;
    }
    return data;
  }

  /* Fetches path with the key and saves it under name (a Blob download). */
  async function download(path, name, button) {
    const label = button ? button.textContent : '';
    if (button) { button.disabled = true; button.textContent = 'Downloading…'; }
    try {
      const resp = await fetch(path, {headers: {Authorization: `Bearer ${key()}`}});
      if (!resp.ok) {
        let msg = `HTTP ${resp.status}`;
        try { msg = (await resp.json()).error.message; } catch (e) { /* not JSON */ }
        throw new Error(msg);
      }
      const blob = await resp.blob();
      const url = URL.createObjectURL(blob);
      const a = el('a', {href: url, download: name, className: 'hidden'});
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      toast(`Downloaded ${name} (${fmtBytes(blob.size)})`);
    } catch (e) {
      toast(`Download failed: ${e.message}`);
    } finally {
      if (button) { button.disabled = false; button.textContent = label; }
    }
  }

  function errorBox(e) {
    return el('div', {className: 'alert', role: 'alert', text: e.message || String(e)});
  }

  /* ---- routing ---------------------------------------------------------------- */

  function signOut(msg) {
    sessionStorage.removeItem(KEY);
    signInMessage = msg || '';
    if (location.hash !== '#/signin') location.hash = '#/signin';
    else route();
  }
  let signInMessage = '';

  function parseHash() {
    const h = location.hash.replace(/^#/, '') || '/jobs';
    const [path, query] = h.split('?');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    return {parts, query: new URLSearchParams(query || '')};
  }

  function setPage(title, navName) {
    if (page && page.cleanup) page.cleanup();
    page = {cleanups: [], cleanup() { this.cleanups.forEach((f) => f()); this.cleanups = []; }};
    document.title = title ? `${title} · deltatune` : 'deltatune';
    fill(main);
    for (const a of document.querySelectorAll('nav a[data-nav]')) {
      if (a.dataset.nav === navName) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    return page;
  }

  function route() {
    const {parts, query} = parseHash();
    const signedIn = !!key();
    document.getElementById('nav').hidden = !signedIn;
    if (!signedIn || parts[0] === 'signin') {
      if (signedIn) { location.hash = '#/jobs'; return; }
      return renderSignIn(parts[0] === 'signin' ? query.get('next') : location.hash);
    }
    const r = parts[0];
    if (r === 'jobs' && parts[1]) return renderJob(parts[1]);
    if (r === 'jobs' || !r) return renderJobs(query);
    if (r === 'new') return renderNew();
    if (r === 'models') return renderModels();
    setPage('Not found');
    main.append(el('h1', {text: 'Not found'}), el('p', {}, 'No such page. ', el('a', {href: '#/jobs', text: 'Jobs'})));
  }

  /* After a navigation, focus goes to the new page's content (not on the
   * first load, so that Tab starts at the skip link). */
  let firstRoute = true;
  function focusMain() { if (!firstRoute) main.focus({preventScroll: true}); }

  /* ---- sign in ---------------------------------------------------------------- */

  function renderSignIn(next) {
    setPage('Sign in', null);
    const err = el('p', {className: 'error', id: 'key-error', role: 'alert'});
    const input = el('input', {id: 'key', name: 'key', type: 'password', autocomplete: 'off', required: true,
      placeholder: 'dt-xxxxxxxx-…', 'aria-describedby': 'key-error key-hint'});
    if (signInMessage) { err.textContent = signInMessage; signInMessage = ''; }
    const form = el('form', {className: 'card signin', novalidate: true},
      el('h1', {text: 'Sign in'}),
      el('div', {className: 'field'},
        el('label', {for: 'key', text: 'API key'}), input,
        el('p', {className: 'hint', id: 'key-hint',
          text: 'Create one with `deltatune keys create OWNER`. It is kept in this tab only (sessionStorage).'}),
        err),
      el('button', {type: 'submit', className: 'primary', text: 'Sign in'}));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const k = input.value.trim();
      err.textContent = '';
      input.removeAttribute('aria-invalid');
      if (!k) { err.textContent = 'Enter your API key.'; input.setAttribute('aria-invalid', 'true'); input.focus(); return; }
      try {
        await api('GET', '/v1/fine_tuning/jobs?limit=1', {key: k});
      } catch (e) {
        err.textContent = e.status === 401 ? 'This API key was refused.' : e.message;
        input.setAttribute('aria-invalid', 'true');
        input.focus();
        return;
      }
      sessionStorage.setItem(KEY, k);
      const dest = next && next.startsWith('#/') && !next.startsWith('#/signin') ? next : '#/jobs';
      if (location.hash === dest) route(); else location.hash = dest;
    });
    main.append(form);
    input.focus();
  }

  /* ---- jobs list -------------------------------------------------------------- */

  const PAGE = 20;

  /* One page of jobs matching status ('' = all) after the cursor. The API
   * has no status filter, so filtered pages read up to 10 x 100 jobs. */
  async function loadJobs(after, status, signal) {
    const out = [];
    let cursor = after, more = true, reads = 0;
    while (out.length < PAGE && more && reads < 10) {
      const q = new URLSearchParams({limit: String(status ? 100 : PAGE)});
      if (cursor) q.set('after', cursor);
      const r = await api('GET', `/v1/fine_tuning/jobs?${q}`, {signal});
      reads++;
      more = r.has_more;
      for (const j of r.data) {
        cursor = j.id;
        if (status && j.status !== status) continue;
        out.push(j);
        if (out.length === PAGE) { more = more || j !== r.data[r.data.length - 1]; break; }
      }
    }
    return {jobs: out, next: more ? cursor : null};
  }

  function renderJobs(query) {
    const pg = setPage('Jobs', 'jobs');
    const status = STATUSES.includes(query.get('status')) ? query.get('status') : '';
    const after = query.get('after') || '';
    const sel = el('select', {id: 'status-filter', 'aria-label': 'Filter by status'},
      el('option', {value: '', text: 'All statuses'}),
      STATUSES.map((s) => el('option', {value: s, text: s.replace('_', ' '), selected: s === status})));
    sel.addEventListener('change', () => {
      location.hash = sel.value ? `#/jobs?status=${sel.value}` : '#/jobs';
    });
    const body = el('div', {className: 'card'}, el('p', {className: 'muted', text: 'Loading…'}));
    main.append(
      el('div', {className: 'row spread'}, el('h1', {text: 'Fine-tuning jobs'}),
        el('div', {className: 'row'}, el('label', {for: 'status-filter', className: 'hidden', text: 'Status'}), sel,
          el('a', {className: 'button primary', href: '#/new', text: 'New job'}))),
      body);
    const ctl = new AbortController();
    let timer = 0;
    pg.cleanups.push(() => { ctl.abort(); clearTimeout(timer); });
    async function refresh() {
      let res;
      try {
        res = await loadJobs(after, status, ctl.signal);
      } catch (e) {
        if (e.name === 'AbortError') return;
        fill(body, errorBox(e));
        timer = setTimeout(refresh, 5000);
        return;
      }
      fill(body, jobsTable(res.jobs), pager(res.next));
      if (res.jobs.some((j) => !TERMINAL.includes(j.status))) timer = setTimeout(refresh, 2000);
    }
    function pager(next) {
      const base = status ? `#/jobs?status=${status}&` : '#/jobs?';
      return el('div', {className: 'row spread small'},
        after ? el('a', {href: status ? `#/jobs?status=${status}` : '#/jobs', text: '« First page'}) : el('span'),
        next ? el('a', {href: `${base}after=${encodeURIComponent(next)}`, id: 'next-page', text: 'Next page »'}) : el('span'));
    }
    refresh();
    focusMain();
  }

  function jobsTable(jobs) {
    if (!jobs.length) return el('p', {className: 'muted', id: 'no-jobs', text: 'No jobs here. '}, el('a', {href: '#/new', text: 'Create one.'}));
    const cols = ['Job', 'Status', 'Method', 'Base model', 'Progress', 'Loss', 'Tokens/s', 'ETA', 'Created', 'Finished'];
    return el('table', {className: 'stack', id: 'jobs-table'},
      el('thead', {}, el('tr', {}, cols.map((c) => el('th', {scope: 'col', text: c, className: ['Loss', 'Tokens/s'].includes(c) ? 'num' : null})))),
      el('tbody', {}, jobs.map((j) => {
        const p = j.progress || {};
        const running = j.status === 'running';
        return el('tr', {'data-job': j.id},
          el('td', {'data-label': 'Job'}, el('a', {href: `#/jobs/${encodeURIComponent(j.id)}`, className: 'mono', text: j.id})),
          el('td', {'data-label': 'Status'}, badge(j.status)),
          el('td', {'data-label': 'Method', text: (j.method && j.method.type) || '—'}),
          el('td', {'data-label': 'Base model', className: 'mono', text: j.model}),
          el('td', {'data-label': 'Progress'}, progressBar(p, j.status),
            el('span', {className: 'small muted', text: p.total_steps ? `${p.step}/${p.total_steps}` : ''})),
          el('td', {'data-label': 'Loss', className: 'num', text: fmtNum(p.train_loss)}),
          el('td', {'data-label': 'Tokens/s', className: 'num', text: p.tokens_per_second ? fmtNum(p.tokens_per_second, 0) : '—'}),
          el('td', {'data-label': 'ETA', text: running ? fmtDur(p.eta_seconds) : '—'}),
          el('td', {'data-label': 'Created', text: fmtTime(j.created_at)}),
          el('td', {'data-label': 'Finished', text: fmtTime(j.finished_at)}));
      })));
  }

  /* ---- the loss chart (our own SVG) ------------------------------------------- */

  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    out.step = step;
    return out;
  }

  /* Draws series [{name, cls, points: [[x, y], ...]}] into svg. */
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

  /* ---- job detail ------------------------------------------------------------- */

  function renderJob(id) {
    const pg = setPage(id, 'jobs');
    const ctl = new AbortController();
    const timers = [];
    pg.cleanups.push(() => { ctl.abort(); timers.forEach(clearTimeout); });
    let job = null;
    const events = new Map(); /* seq -> event */
    let lastSeq = 0;

    const head = el('div');
    const summary = el('div', {className: 'card', id: 'summary'});
    const hp = el('div', {className: 'card'});
    const lossSvg = el('svg', {svg: true, className: 'chart', id: 'loss-chart', viewBox: '0 0 960 300', role: 'img', 'aria-label': 'Training and validation loss by step'});
    const lrSvg = el('svg', {svg: true, className: 'chart', id: 'lr-chart', viewBox: '0 0 640 260', role: 'img', 'aria-label': 'Learning rate by step'});
    const live = el('span', {className: 'small muted', id: 'live-mode'});
    const log = el('ol', {className: 'log', id: 'events', 'aria-live': 'off'});
    const ckpts = el('div', {id: 'checkpoints'}, el('p', {className: 'muted', text: 'Loading…'}));
    const files = el('div', {id: 'model-files'});
    main.append(head,
      el('div', {className: 'grid2'}, summary, hp),
      el('div', {className: 'card'},
        el('div', {className: 'row spread'}, el('h2', {text: 'Loss'}), live),
        el('div', {className: 'legend'}, el('span', {}, el('span', {className: 'sw train'}), 'training'),
          el('span', {}, el('span', {className: 'sw valid'}), 'validation')),
        lossSvg),
      el('div', {className: 'grid2'},
        el('div', {className: 'card'}, el('h2', {text: 'Learning rate'}), lrSvg),
        el('div', {className: 'card'}, el('h2', {text: 'Events'}), log)),
      el('div', {className: 'card'}, el('h2', {text: 'Checkpoints'}), ckpts),
      el('div', {className: 'card'}, el('h2', {text: 'Fine-tuned model'}), files));

    function renderHead() {
      const j = job;
      const act = (name, verb, enabled) => el('button', {type: 'button', id: `btn-${name}`,
        className: name === 'cancel' ? 'danger' : null, disabled: !enabled,
        onclick: (ev) => transition(name, verb, ev.currentTarget)}, verb);
      // a live update redraws the buttons: keep keyboard focus on the same one
      const had = document.activeElement && head.contains(document.activeElement) ? document.activeElement.id : '';
      const pending = j.status !== 'running' ? '' : j.cancel_requested ? 'cancel requested…'
        : j.pause_requested ? 'pause requested…' : '';
      fill(head,
        el('p', {className: 'small'}, el('a', {href: '#/jobs', text: '« Jobs'})),
        el('div', {className: 'row spread'},
          el('h1', {}, el('span', {className: 'mono', text: j.id}), ' ', el('span', {id: 'job-status'}, badge(j.status)),
            pending ? el('span', {className: 'small muted', id: 'job-pending', text: ` ${pending}`}) : null),
          el('div', {className: 'row'},
            act('pause', 'Pause', ['queued', 'running'].includes(j.status) && !j.pause_requested && !j.cancel_requested),
            act('resume', 'Resume', j.status === 'paused' || (j.status === 'running' && j.pause_requested)),
            act('cancel', 'Cancel', !TERMINAL.includes(j.status) && !j.cancel_requested))),
        j.error ? el('div', {className: 'alert', role: 'alert'}, el('strong', {text: `${j.error.code}: `}), j.error.message) : null);
      const again = had && document.getElementById(had);
      if (again && !again.disabled) again.focus();
    }

    function renderSummary() {
      const j = job, p = j.progress || {};
      const kv = (k, v, idv) => el('tr', {}, el('th', {scope: 'row', text: k}), el('td', {id: idv || null}, v));
      fill(summary, el('h2', {text: 'Progress'}),
        progressBar(p, j.status),
        el('table', {className: 'kv'}, el('tbody', {},
          kv('Step', p.total_steps ? `${p.step} / ${p.total_steps} (epoch ${fmtNum(p.epoch, 2)})` : '—', 'step'),
          kv('Training loss', fmtNum(p.train_loss), 'train-loss'),
          kv('Validation loss', fmtNum(p.valid_loss), 'valid-loss'),
          kv('Tokens/s', p.tokens_per_second ? fmtNum(p.tokens_per_second, 0) : '—'),
          kv('ETA', j.status === 'running' ? fmtDur(p.eta_seconds) : '—'),
          kv('Base model', el('span', {className: 'mono', text: j.model})),
          kv('Training file', el('span', {className: 'mono', text: j.training_file})),
          kv('Validation file', el('span', {className: 'mono', text: j.validation_file || '—'})),
          kv('Created', fmtTime(j.created_at)),
          kv('Finished', fmtTime(j.finished_at)),
          kv('Trained tokens', j.trained_tokens === null ? '—' : String(j.trained_tokens)))));
    }

    function renderHp() {
      const m = job.method || {};
      const h = (m[m.type] && m[m.type].hyperparameters) || {};
      const rows = [['Method', m.type], ['r (rank)', h.rank], ['α (alpha)', h.alpha], ['λ (lambda)', h.lambda],
        ['K (start step)', h.start_step], ['Learning rate', h.learning_rate !== undefined ? fmtLr(h.learning_rate) : undefined],
        ['LR schedule', h.lr_scheduler], ['Warm-up steps', h.warmup_steps], ['Epochs', h.n_epochs], ['Batch size', h.batch_size],
        ['Gradient accumulation', h.gradient_accumulation_steps], ['Sequence length', h.seq_len], ['Target modules', h.target_modules],
        ['Weight decay', h.weight_decay], ['Max grad norm', h.max_grad_norm], ['Max steps', h.max_steps], ['Seed', h.seed]];
      fill(hp, el('h2', {text: 'Hyperparameters'}),
        el('table', {className: 'kv', id: 'hyperparameters'}, el('tbody', {},
          rows.filter((r) => r[1] !== undefined && r[1] !== null).map(([k, v]) =>
            el('tr', {}, el('th', {scope: 'row', text: k}), el('td', {className: 'mono', text: String(v)}))))));
    }

    function renderAll() { renderHead(); renderSummary(); renderHp(); }

    let chartQueued = false;
    function redrawCharts() {
      if (chartQueued) return;
      chartQueued = true;
      requestAnimationFrame(() => {
        chartQueued = false;
        const ms = [...events.values()].filter((e) => e.type === 'metrics' && e.data).sort((a, b) => a.seq - b.seq);
        const pts = (f) => {
          const m = new Map();
          for (const e of ms) if (typeof e.data[f] === 'number' && typeof e.data.step === 'number') m.set(e.data.step, e.data[f]);
          return [...m.entries()].sort((a, b) => a[0] - b[0]);
        };
        drawChart(lossSvg, [{name: 'training loss', cls: 'train', points: pts('train_loss')},
          {name: 'validation loss', cls: 'valid', points: pts('valid_loss'), dots: true}],
        {width: 960, height: 300, empty: 'No loss reported yet'});
        drawChart(lrSvg, [{name: 'learning rate', cls: 'lr', points: pts('learning_rate')}],
          {zero: true, exp: true, empty: 'No learning rate reported yet'});
      });
    }

    function addEvents(list) {
      let added = 0;
      for (const e of list) {
        const seq = Number(String(e.id).replace('ftevent-', ''));
        if (!seq || events.has(seq)) continue;
        e.seq = seq;
        events.set(seq, e);
        if (seq > lastSeq) lastSeq = seq;
        added++;
      }
      if (!added) return;
      const sorted = [...events.values()].sort((a, b) => b.seq - a.seq).slice(0, 500);
      fill(log, ...sorted.map((e) => el('li', {'data-seq': e.seq},
        el('time', {datetime: new Date(e.created_at * 1000).toISOString(), text: fmtTime(e.created_at)}),
        el('span', {className: `lvl-${e.level}`, text: e.message}))));
      redrawCharts();
      /* the newest metrics move the progress table without waiting for a poll */
      const m = list.filter((e) => e.type === 'metrics' && e.data).sort((a, b) => b.seq - a.seq)[0];
      if (m && job && job.status === 'running' && m.seq === lastSeq && job.progress) {
        for (const k of ['step', 'total_steps', 'epoch', 'train_loss', 'valid_loss', 'tokens_per_second', 'eta_seconds'])
          if (m.data[k] !== undefined && m.data[k] !== null) job.progress[k] = m.data[k];
        renderSummary();
      }
      if (list.some((e) => e.type === 'message')) { refreshJob(); refreshCheckpoints(); }
    }

    let jobTimer = 0, jobInflight = false;
    async function refreshJob() {
      if (jobInflight) return;
      jobInflight = true;
      try {
        job = await api('GET', `/v1/fine_tuning/jobs/${encodeURIComponent(id)}`, {signal: ctl.signal});
        renderAll();
        if (TERMINAL.includes(job.status)) refreshFiles();
      } catch (e) {
        if (e.name !== 'AbortError') toast(e.message);
      } finally {
        jobInflight = false;
      }
    }

    async function refreshCheckpoints() {
      try {
        const r = await api('GET', `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/checkpoints?limit=100`, {signal: ctl.signal});
        if (!r.data.length) { fill(ckpts, el('p', {className: 'muted', text: 'No checkpoints yet.'})); return; }
        fill(ckpts, el('table', {className: 'stack', id: 'checkpoints-table'},
          el('thead', {}, el('tr', {}, ['Step', 'Training loss', 'Validation loss', 'Model', 'Created', ''].map((c) => el('th', {scope: 'col', text: c})))),
          el('tbody', {}, r.data.map((c) => el('tr', {},
            el('td', {'data-label': 'Step', text: String(c.step_number)}),
            el('td', {'data-label': 'Training loss', text: fmtNum(c.metrics.train_loss)}),
            el('td', {'data-label': 'Validation loss', text: fmtNum(c.metrics.valid_loss)}),
            el('td', {'data-label': 'Model', className: 'mono small', text: c.fine_tuned_model_checkpoint}),
            el('td', {'data-label': 'Created', text: fmtTime(c.created_at)}),
            el('td', {'data-label': ''}, el('button', {type: 'button', text: 'Download (.tar)',
              onclick: (ev) => download(`/v1/models/${encodeURIComponent(c.fine_tuned_model_checkpoint)}/archive`,
                `${archiveName(c.fine_tuned_model_checkpoint)}.tar`, ev.currentTarget)})))))));
      } catch (e) {
        if (e.name !== 'AbortError') fill(ckpts, errorBox(e));
      }
    }

    let filesShown = '';
    async function refreshFiles() {
      if (!job.fine_tuned_model) {
        fill(files, el('p', {className: 'muted', text: job.status === 'succeeded' ? '—' : 'The merged model appears here when the job succeeds.'}));
        return;
      }
      if (filesShown === job.fine_tuned_model) return;
      filesShown = job.fine_tuned_model;
      fill(files, el('p', {className: 'mono', text: job.fine_tuned_model}), modelFiles(job.fine_tuned_model, ctl.signal));
    }

    async function transition(name, verb, button) {
      button.disabled = true;
      try {
        job = await api('POST', `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/${name}`, {json: {}});
        renderAll();
        const what = job.cancel_requested ? 'cancel requested; the job stops within one step'
          : job.pause_requested ? 'pause requested; the job pauses after a checkpoint' : `job is now ${job.status}`;
        toast(`${verb}: ${what}`);
        if (name === 'resume' && !streaming) startLive();
      } catch (e) {
        toast(`${verb} failed: ${e.message}`);
        refreshJob();
      }
    }

    /* Live updates: the SSE stream read with fetch (EventSource cannot send
     * the Authorization header); polling when the stream is unavailable. */
    let streaming = false;
    async function stream() {
      const headers = {Authorization: `Bearer ${key()}`, Accept: 'text/event-stream'};
      if (lastSeq) headers['Last-Event-ID'] = `ftevent-${lastSeq}`;
      const resp = await fetch(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?stream=true`,
        {headers, signal: ctl.signal, cache: 'no-store'});
      if (!resp.ok || !resp.body) throw new Error(`stream HTTP ${resp.status}`);
      live.textContent = '● live';
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      let buf = '', ended = false;
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buf += dec.decode(value, {stream: true});
        let cut;
        const batch = [];
        while ((cut = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          let type = 'message', data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) type = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).replace(/^ /, '');
          }
          if (!data) continue;
          if (type === 'end') { ended = true; continue; }
          try { batch.push(JSON.parse(data)); } catch (e) { /* skip a malformed event */ }
        }
        if (batch.length) addEvents(batch);
      }
      return ended;
    }

    async function poll() {
      live.textContent = '○ polling';
      const r = await api('GET', `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?limit=100`, {signal: ctl.signal});
      addEvents(r.data);
      await refreshJob();
      if (!TERMINAL.includes(job.status)) timers.push(setTimeout(() => poll().catch(pollFailed), 2000));
      else live.textContent = '';
    }
    function pollFailed(e) {
      if (e.name === 'AbortError') return;
      live.textContent = '○ offline, retrying';
      timers.push(setTimeout(() => poll().catch(pollFailed), 5000));
    }

    async function loadAllEvents() {
      let after = '';
      for (let i = 0; i < 20; i++) {
        const r = await api('GET', `/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?limit=1000${after ? `&after=${after}` : ''}`, {signal: ctl.signal});
        addEvents(r.data);
        if (!r.has_more || !r.data.length) break;
        after = r.data[r.data.length - 1].id;
      }
    }

    async function startLive() {
      streaming = true;
      try {
        const ended = await stream();
        streaming = false;
        live.textContent = '';
        await refreshJob();
        refreshCheckpoints();
        if (!ended && !TERMINAL.includes(job.status)) throw new Error('stream closed');
      } catch (e) {
        streaming = false;
        if (e.name === 'AbortError') return;
        try { await loadAllEvents(); } catch (e2) { if (e2.name === 'AbortError') return; }
        poll().catch(pollFailed);
      }
    }

    (async () => {
      try {
        job = await api('GET', `/v1/fine_tuning/jobs/${encodeURIComponent(id)}`, {signal: ctl.signal});
      } catch (e) {
        if (e.name === 'AbortError') return;
        fill(main, el('p', {className: 'small'}, el('a', {href: '#/jobs', text: '« Jobs'})),
          el('h1', {text: e.status === 404 ? 'Job not found' : 'Could not load the job'}), errorBox(e));
        return;
      }
      renderAll();
      redrawCharts();
      refreshCheckpoints();
      refreshFiles();
      if (TERMINAL.includes(job.status)) {
        try { await loadAllEvents(); } catch (e) { if (e.name !== 'AbortError') toast(e.message); }
      } else {
        startLive();
      }
      jobTimer = setInterval(() => { if (!TERMINAL.includes(job.status)) refreshJob(); }, 3000);
      timers.push(jobTimer);
      pg.cleanups.push(() => clearInterval(jobTimer));
    })();
    focusMain();
  }

  function archiveName(modelId) { return modelId.replace(/[:/]/g, '_'); }

  /* The files of a model (name, size, sha256, download) and its archive. */
  function modelFiles(modelId, signal) {
    const box = el('div', {className: 'model-files'}, el('p', {className: 'muted', text: 'Loading files…'}));
    (async () => {
      try {
        const r = await api('GET', `/v1/models/${encodeURIComponent(modelId)}/files`, {signal});
        const base = `/v1/models/${encodeURIComponent(modelId)}`;
        const total = r.data.reduce((s, f) => s + f.bytes, 0);
        fill(box,
          el('div', {className: 'row'}, el('button', {type: 'button', className: 'primary', text: 'Download all (.tar)',
            onclick: (ev) => download(`${base}/archive`, `${archiveName(modelId)}.tar`, ev.currentTarget)}),
          el('span', {className: 'small muted', text: `${r.data.length} files, ${fmtBytes(total)}`})),
          el('table', {className: 'stack files-table'},
            el('thead', {}, el('tr', {}, ['File', 'Size', 'SHA-256', ''].map((c) => el('th', {scope: 'col', text: c})))),
            el('tbody', {}, r.data.map((f) => el('tr', {'data-file': f.name},
              el('td', {'data-label': 'File', className: 'mono', text: f.name}),
              el('td', {'data-label': 'Size', text: fmtBytes(f.bytes)}),
              el('td', {'data-label': 'SHA-256', className: 'mono small', text: f.sha256}),
              el('td', {'data-label': ''}, el('button', {type: 'button', text: 'Download',
                'aria-label': `Download ${f.name}`,
                onclick: (ev) => download(`${base}/files/${encodeURIComponent(f.name)}`, f.name, ev.currentTarget)})))))));
      } catch (e) {
        if (e.name !== 'AbortError') fill(box, errorBox(e));
      }
    })();
    return box;
  }

  /* ---- new job ------------------------------------------------------------------ */

  /* The API's limits (api/validate.c, api/openapi.yaml), checked here too. */
  const HP = [
    {k: 'n_epochs', label: 'Epochs', def: 3, int: true, min: 1, max: 100},
    {k: 'batch_size', label: 'Batch size', def: 4, int: true, min: 1, max: 256},
    {k: 'learning_rate', label: 'Learning rate', def: 2e-4, min: 0, minEx: true, max: 1},
    {k: 'rank', label: 'r (rank)', def: 8, int: true, min: 1, max: 256, methods: ['lora', 'delta_lora']},
    {k: 'alpha', label: 'α (alpha)', def: 16, min: 0, minEx: true, max: 4096, methods: ['lora', 'delta_lora']},
    {k: 'lambda', label: 'λ (lambda)', def: 0.5, min: 0, max: 100, methods: ['delta_lora']},
    {k: 'start_step', label: 'K (start step)', def: '', auto: true, int: true, min: -1, max: 1e7, methods: ['delta_lora'],
      hint: 'empty = auto: 10% of the steps'},
    {k: 'target_modules', label: 'Target modules', def: 'q,v', text: true, methods: ['lora', 'delta_lora'],
      hint: 'comma-separated: q k v o gate up down c_attn (or *_proj)'},
    {k: 'seq_len', label: 'Sequence length', def: 256, int: true, min: 8, max: 8192},
    {k: 'warmup_steps', label: 'Warm-up steps', def: 0, int: true, min: 0, max: 1e6},
    {k: 'lr_scheduler', label: 'LR schedule', def: 'linear', choices: ['linear', 'cosine', 'constant']},
    {k: 'weight_decay', label: 'Weight decay', def: 0, min: 0, max: 1},
    {k: 'max_grad_norm', label: 'Max grad norm', def: 1.0, min: 0, max: 1e6},
    {k: 'gradient_accumulation_steps', label: 'Gradient accumulation', def: 1, int: true, min: 1, max: 1024},
    {k: 'max_steps', label: 'Max steps', def: 0, int: true, min: 0, max: 1e7, hint: '0 = the epochs decide'},
    {k: 'checkpoint_interval', label: 'Checkpoint every', def: 0, int: true, min: 0, max: 1e7, hint: 'steps; 0 = the worker chooses'},
    {k: 'eval_interval', label: 'Evaluate every', def: 0, int: true, min: 0, max: 1e7, hint: 'steps; 0 = the worker chooses'},
    {k: 'seed', label: 'Seed', def: 42, int: true, min: 0, max: 9007199254740992},
  ];
  const TARGETS = ['q', 'k', 'v', 'o', 'gate', 'up', 'down', 'c_attn', 'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

  /* Checks one field's text; returns [value, error]. */
  function checkField(h, raw) {
    const s = raw.trim();
    if (h.choices) return h.choices.includes(s) ? [s, ''] : [null, `${h.k} must be one of ${h.choices.join(', ')}`];
    if (h.text) {
      const parts = s.split(',').map((x) => x.trim()).filter(Boolean);
      if (!parts.length) return [null, `${h.k} needs at least one module`];
      const bad = parts.find((p) => !TARGETS.includes(p));
      return bad ? [null, `unknown module "${bad}"; use ${TARGETS.join(', ')}`] : [parts.join(','), ''];
    }
    if (s === '' && h.auto) return ['auto', ''];
    if (s === '') return [null, `${h.k} is required`];
    const x = Number(s);
    if (!isFinite(x)) return [null, `${h.k} must be a number`];
    if (h.int && !Number.isInteger(x)) return [null, `${h.k} must be an integer between ${h.min} and ${h.max}`];
    if (h.int && (x < h.min || x > h.max)) return [null, `${h.k} must be an integer between ${h.min} and ${h.max}`];
    if (!h.int && ((h.minEx ? x <= h.min : x < h.min) || x > h.max))
      return [null, `${h.k} must be a number ${h.minEx ? '>' : '>='} ${h.min} and <= ${h.max}`];
    return [x, ''];
  }

  function field(id, label, input, hint) {
    const err = el('p', {className: 'error', id: `${id}-error`, 'aria-live': 'polite'});
    input.id = id;
    input.setAttribute('aria-describedby', `${id}-error${hint ? ` ${id}-hint` : ''}`);
    return {wrap: el('div', {className: 'field', id: `${id}-field`},
      el('label', {for: id, text: label}), input,
      hint ? el('p', {className: 'hint', id: `${id}-hint`, text: hint}) : null, err), input, err};
  }
  function setErr(f, msg) {
    f.err.textContent = msg || '';
    if (msg) f.input.setAttribute('aria-invalid', 'true'); else f.input.removeAttribute('aria-invalid');
  }

  function renderNew() {
    const pg = setPage('New job', 'new');
    const ctl = new AbortController();
    pg.cleanups.push(() => ctl.abort());

    const model = field('model', 'Base model', el('select', {name: 'model'}, el('option', {value: '', text: 'Loading…'})));
    const method = field('method', 'Method', el('select', {name: 'method'},
      el('option', {value: 'delta_lora', text: 'Delta-LoRA'}), el('option', {value: 'lora', text: 'LoRA'}),
      el('option', {value: 'full', text: 'Full fine-tuning'})));
    const train = field('training_file', 'Training file', el('select', {name: 'training_file'}, el('option', {value: '', text: '—'})));
    const valid = field('validation_file', 'Validation file (optional)', el('select', {name: 'validation_file'}, el('option', {value: '', text: 'none'})));
    const suffix = field('suffix', 'Suffix (optional)', el('input', {name: 'suffix', maxlength: 64, autocomplete: 'off'}), 'letters, digits, _ and -; up to 64');
    const upload = field('upload', 'Upload a JSONL file', el('input', {type: 'file', name: 'upload', accept: '.jsonl,.json,application/jsonl,application/x-ndjson,text/plain'}),
      'Each line: {"text"}, {"prompt","completion"}, {"messages":[...]} or {"input_ids"}. Bad lines are listed below.');
    const uploadResult = el('div', {id: 'upload-result', 'aria-live': 'polite'});
    const hps = HP.map((h) => {
      const input = h.choices
        ? el('select', {name: h.k}, h.choices.map((c) => el('option', {value: c, text: c, selected: c === h.def})))
        : el('input', {name: h.k, value: String(h.def), inputmode: h.text ? 'text' : h.int ? 'numeric' : 'decimal',
          autocomplete: 'off', placeholder: h.auto ? 'auto' : null});
      const f = field(`hp-${h.k}`, h.label, input, h.hint);
      f.h = h;
      input.addEventListener('change', () => setErr(f, checkField(h, input.value)[1]));
      return f;
    });
    const formErr = el('div', {id: 'form-error', 'aria-live': 'assertive'});
    const submit = el('button', {type: 'submit', className: 'primary', text: 'Create job'});
    const form = el('form', {id: 'new-job', novalidate: true},
      el('h1', {text: 'New fine-tuning job'}),
      el('div', {className: 'card'}, el('h2', {text: 'Data'}), upload.wrap, uploadResult,
        el('div', {className: 'fields'}, train.wrap, valid.wrap)),
      el('div', {className: 'card'}, el('h2', {text: 'Model and method'}),
        el('div', {className: 'fields'}, model.wrap, method.wrap, suffix.wrap)),
      el('div', {className: 'card'}, el('h2', {text: 'Hyperparameters'}),
        el('p', {className: 'hint', text: 'Prefilled with the documented defaults.'}),
        el('div', {className: 'fields'}, hps.map((f) => f.wrap))),
      formErr, submit);
    main.append(form);

    function showMethod() {
      for (const f of hps) f.wrap.classList.toggle('hidden', !!f.h.methods && !f.h.methods.includes(method.input.value));
    }
    method.input.addEventListener('change', showMethod);
    showMethod();

    async function loadChoices(selectTrain) {
      try {
        const [models, filesList] = await Promise.all([
          api('GET', '/v1/models', {signal: ctl.signal}), api('GET', '/v1/files?purpose=fine-tune&limit=100', {signal: ctl.signal})]);
        const cur = model.input.value;
        const ms = models.data.filter((m) => m.kind !== 'checkpoint');
        fill(model.input, ...ms.map((m) => el('option', {value: m.id, selected: m.id === cur,
          text: `${m.id}${m.kind === 'base' ? '' : ' (fine-tuned)'}`})));
        if (!ms.length) fill(model.input, el('option', {value: '', text: 'no models registered'}));
        const ok = filesList.data.filter((f) => f.status === 'processed');
        const opt = (f) => el('option', {value: f.id, text: `${f.filename} · ${f.lines} lines · ${f.id}`});
        const t = selectTrain || train.input.value, v = valid.input.value;
        fill(train.input, el('option', {value: '', text: ok.length ? 'choose…' : 'upload a file first'}), ...ok.map(opt));
        fill(valid.input, el('option', {value: '', text: 'none'}), ...ok.map(opt));
        train.input.value = ok.some((f) => f.id === t) ? t : '';
        valid.input.value = ok.some((f) => f.id === v) ? v : '';
      } catch (e) {
        if (e.name !== 'AbortError') fill(formErr, errorBox(e));
      }
    }
    loadChoices();

    upload.input.addEventListener('change', async () => {
      const file = upload.input.files[0];
      setErr(upload, '');
      if (!file) return;
      fill(uploadResult, el('p', {className: 'muted', text: `Uploading ${file.name} (${fmtBytes(file.size)})…`}));
      const fd = new FormData();
      fd.append('purpose', 'fine-tune');
      fd.append('file', file, file.name);
      let f;
      try {
        f = await api('POST', '/v1/files', {body: fd, signal: ctl.signal});
      } catch (e) {
        if (e.name === 'AbortError') return;
        fill(uploadResult);
        setErr(upload, e.message);
        return;
      }
      if (f.status !== 'processed') {
        const lines = (f.status_details || 'invalid file').split('\n').filter(Boolean);
        fill(uploadResult, el('div', {className: 'alert', role: 'alert', id: 'upload-errors'},
          el('strong', {text: `${f.filename} is not valid training data (${lines.length} problem${lines.length === 1 ? '' : 's'}):`}),
          el('ul', {className: 'errors'}, lines.map((l) => el('li', {text: l})))));
        setErr(upload, 'Fix the lines listed below and upload again.');
        return;
      }
      fill(uploadResult, el('p', {className: 'ok', id: 'upload-ok'},
        `✓ ${f.filename}: ${f.lines} lines, ${fmtBytes(f.bytes)}, sha256 `, el('span', {className: 'mono small', text: f.sha256})));
      await loadChoices(train.input.value ? null : f.id);
      if (train.input.value !== f.id && !train.input.value) train.input.value = f.id;
    });

    const fieldFor = (param) => {
      if (!param) return null;
      const last = param.split('.').pop();
      return {model, training_file: train, validation_file: valid, suffix, method}[param] ||
        hps.find((f) => f.h.k === last) || (last === 'learning_rate_multiplier' ? hps.find((f) => f.h.k === 'learning_rate') : null);
    };

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      fill(formErr);
      const m = method.input.value;
      const body = {model: model.input.value, training_file: train.input.value, method: {type: m}};
      const hpOut = {};
      let first = null;
      const fail = (f, msg) => { setErr(f, msg); if (msg && !first) first = f; };
      fail(model, model.input.value ? '' : 'choose a model');
      fail(train, train.input.value ? '' : 'upload or choose a training file');
      const sfx = suffix.input.value.trim();
      fail(suffix, /^[A-Za-z0-9_-]{0,64}$/.test(sfx) ? '' : 'suffix: up to 64 letters, digits, _ or -');
      for (const f of hps) {
        if (f.h.methods && !f.h.methods.includes(m)) { setErr(f, ''); continue; }
        const [v, err] = checkField(f.h, f.input.value);
        fail(f, err);
        if (!err) hpOut[f.h.k] = v;
      }
      if (first) { first.input.focus(); return; }
      body.method[m] = {hyperparameters: hpOut};
      if (valid.input.value) body.validation_file = valid.input.value;
      if (sfx) body.suffix = sfx;
      submit.disabled = true;
      try {
        const job = await api('POST', '/v1/fine_tuning/jobs', {json: body});
        toast(`Created ${job.id}`);
        location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
      } catch (e) {
        const f = fieldFor(e.param);
        if (f) { setErr(f, e.message); f.input.focus(); } else fill(formErr, errorBox(e));
      } finally {
        submit.disabled = false;
      }
    });
    focusMain();
  }

  /* ---- models --------------------------------------------------------------------- */

  function renderModels() {
    const pg = setPage('Models', 'models');
    const ctl = new AbortController();
    pg.cleanups.push(() => ctl.abort());
    const body = el('div', {className: 'card'}, el('p', {className: 'muted', text: 'Loading…'}));
    main.append(el('h1', {text: 'Models'}), body);
    (async () => {
      let r;
      try {
        r = await api('GET', '/v1/models', {signal: ctl.signal});
      } catch (e) {
        if (e.name !== 'AbortError') fill(body, errorBox(e));
        return;
      }
      const order = {base: 0, fine_tuned: 1, checkpoint: 2};
      const ms = r.data.slice().sort((a, b) => (order[a.kind] - order[b.kind]) || (b.created - a.created));
      if (!ms.length) { fill(body, el('p', {className: 'muted', text: 'No models.'})); return; }
      fill(body, el('table', {className: 'stack', id: 'models-table'},
        el('thead', {}, el('tr', {}, ['Model', 'Kind', 'Owner', 'Job', 'Created', ''].map((c) => el('th', {scope: 'col', text: c})))),
        el('tbody', {}, ms.map((m) => {
          const filesRow = el('tr', {className: 'hidden'}, el('td', {colspan: 6}));
          const btn = el('button', {type: 'button', text: 'Files', 'aria-expanded': 'false',
            'aria-label': `Files of ${m.id}`,
            onclick: () => {
              const open = btn.getAttribute('aria-expanded') === 'true';
              btn.setAttribute('aria-expanded', String(!open));
              filesRow.classList.toggle('hidden', open);
              if (!open && !filesRow.firstChild.firstChild) filesRow.firstChild.append(modelFiles(m.id, ctl.signal));
            }});
          return [el('tr', {'data-model': m.id},
            el('td', {'data-label': 'Model', className: 'mono', text: m.id}),
            el('td', {'data-label': 'Kind', text: m.kind.replace('_', ' ') + (m.step ? ` (step ${m.step})` : '')}),
            el('td', {'data-label': 'Owner', text: m.owned_by}),
            el('td', {'data-label': 'Job'}, m.job ? el('a', {href: `#/jobs/${encodeURIComponent(m.job)}`, className: 'mono', text: m.job}) : '—'),
            el('td', {'data-label': 'Created', text: fmtTime(m.created)}),
            el('td', {'data-label': ''}, btn)), filesRow];
        }))));
    })();
    focusMain();
  }

  /* ---- start ---------------------------------------------------------------------- */

  document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));
  window.addEventListener('hashchange', route);
  route();
  firstRoute = false;
})();
