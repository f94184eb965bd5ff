/* job.js: one job's page (#/jobs/<id>): the header with its actions (pause,
 * resume, cancel), progress, hyperparameters, the loss and learning-rate
 * charts, the event log, checkpoints and the fine-tuned model's files
 * (each with "Try it": the playground, playground.js).
 * Every part is drawn from one view object (jobView) by its own function;
 * live.js keeps the view up to date (the event stream, or polling). */
'use strict';

function renderJob(id) {
  const pg = setPage(id, 'jobs');
  const v = jobView(id);
  /* clearTimeout clears intervals too: HTML keeps one list of both */
  pg.cleanups.push(() => { v.ctl.abort(); v.timers.forEach(clearTimeout); });
  main.append(...jobLayout(v));
  jobStart(v);
  focusMain();
}

/* The state of one job's page: what the API said, the events seen so far
 * and the nodes each part is drawn into. Ends with v.ctl.abort(). */
function jobView(id) {
  return {
    id,
    path: `/v1/fine_tuning/jobs/${encodeURIComponent(id)}`,
    ctl: new AbortController(),
    timers: [],            /* timeouts and intervals, cleared when the page goes */
    job: null,             /* the newest GET of the job */
    events: new Map(),     /* seq -> event */
    lastSeq: 0,
    streaming: false,      /* the event stream is open */
    jobInflight: false,    /* a GET of the job is under way */
    chartQueued: false,    /* a chart redraw waits for the next frame */
    filesShown: '',        /* the model whose files are on screen */
    head: el('div'),
    summary: el('div', {className: 'card', id: 'summary'}),
    hp: el('div', {className: 'card'}),
    lossSvg: el('svg', {svg: true, className: 'chart', id: 'loss-chart', viewBox: '0 0 960 300', role: 'img',
      'aria-label': 'Training and validation loss by step'}),
    lrSvg: el('svg', {svg: true, className: 'chart', id: 'lr-chart', viewBox: '0 0 640 260', role: 'img',
      'aria-label': 'Learning rate by step'}),
    live: el('span', {className: 'small muted', id: 'live-mode'}),
    log: el('ol', {className: 'log', id: 'events', 'aria-live': 'off'}),
    ckpts: el('div', {id: 'checkpoints'}, el('p', {className: 'muted', text: 'Loading…'})),
    files: el('div', {id: 'model-files'}),
  };
}

/* The page's cards around the view's nodes. */
function jobLayout(v) {
  return [v.head,
    el('div', {className: 'grid2'}, v.summary, v.hp),
    el('div', {className: 'card'},
      el('div', {className: 'row spread'}, el('h2', {text: 'Loss'}), v.live),
      el('div', {className: 'legend'}, el('span', {}, el('span', {className: 'sw train'}), 'training'),
        el('span', {}, el('span', {className: 'sw valid'}), 'validation')),
      v.lossSvg),
    el('div', {className: 'grid2'},
      el('div', {className: 'card'}, el('h2', {text: 'Learning rate'}), v.lrSvg),
      el('div', {className: 'card'}, el('h2', {text: 'Events'}), v.log)),
    el('div', {className: 'card'}, el('h2', {text: 'Checkpoints'}), v.ckpts),
    el('div', {className: 'card'}, el('h2', {text: 'Fine-tuned model'}), v.files)];
}

/* The first load: the job (or a "not found" page), then everything else,
 * then live updates while the job can still change. */
async function jobStart(v) {
  try {
    v.job = await api('GET', v.path, {signal: v.ctl.signal});
  } catch (e) {
    if (e.name === 'AbortError') return;
    fill(main, el('p', {className: 'small'}, el('a', {href: '#/jobs', text: '« Jobs'})),
      el('h1', {text: e.status === 404 ? 'Job not found' : 'Could not load the job'}), errorBox(e));
    return;
  }
  jobRender(v);
  jobRedrawCharts(v);
  jobRefreshCheckpoints(v);
  jobRefreshFiles(v);
  if (TERMINAL.includes(v.job.status)) {
    try { await jobLoadAllEvents(v); } catch (e) { if (e.name !== 'AbortError') toast(e.message); }
  } else {
    jobStartLive(v);
  }
  v.timers.push(setInterval(() => { if (!TERMINAL.includes(v.job.status)) jobRefresh(v); }, 3000));
}

/* ---- the parts drawn from v.job ------------------------------------------------- */

function jobRender(v) { jobRenderHead(v); jobRenderSummary(v); jobRenderHp(v); }

/* The id, status and action buttons (a live update redraws them: keyboard
 * focus stays on the same button). */
function jobRenderHead(v) {
  const j = v.job;
  const act = (name, verb, enabled) => el('button', {type: 'button', id: `btn-${name}`,
    className: name === 'cancel' ? 'danger' : null, disabled: !enabled,
    onclick: (ev) => jobTransition(v, name, verb, ev.currentTarget)}, verb);
  const had = document.activeElement && v.head.contains(document.activeElement) ? document.activeElement.id : '';
  const pending = j.status !== 'running' ? '' : j.cancel_requested ? 'cancel requested…'
    : j.pause_requested ? 'pause requested…' : '';
  fill(v.head,
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

function jobRenderSummary(v) {
  const j = v.job, p = j.progress || {};
  const kv = (k, val, idv) => el('tr', {}, el('th', {scope: 'row', text: k}), el('td', {id: idv || null}, val));
  fill(v.summary, el('h2', {text: 'Progress'}),
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

function jobRenderHp(v) {
  const m = v.job.method || {};
  const h = (m[m.type] && m[m.type].hyperparameters) || {};
  const rows = [['Method', m.type], ['r (rank)', h.rank], ['α (alpha)', h.alpha], ['λ (lambda)', h.lambda],
    ['K (start step)', h.start_step], ['Learning rate', h.learning_rate !== undefined ? fmtLr(h.learning_rate) : undefined],
    ['LR schedule', h.lr_scheduler], ['Warm-up steps', h.warmup_steps], ['Epochs', h.n_epochs], ['Batch size', h.batch_size],
    ['Gradient accumulation', h.gradient_accumulation_steps], ['Sequence length', h.seq_len], ['Target modules', h.target_modules],
    ['Weight decay', h.weight_decay], ['Max grad norm', h.max_grad_norm], ['Max steps', h.max_steps], ['Seed', h.seed],
    ['Packing', h.packing]];
  fill(v.hp, el('h2', {text: 'Hyperparameters'}),
    el('table', {className: 'kv', id: 'hyperparameters'}, el('tbody', {},
      rows.filter((r) => r[1] !== undefined && r[1] !== null).map(([k, val]) =>
        el('tr', {}, el('th', {scope: 'row', text: k}), el('td', {className: 'mono', text: String(val)}))))));
}

/* ---- the metrics charts and the event log, from v.events ---------------------- */

/* [[step, value], ...] of one metric, by step (the newest report of a step
 * wins). */
function jobMetricPoints(v, name) {
  const ms = [...v.events.values()].filter((e) => e.type === 'metrics' && e.data).sort((a, b) => a.seq - b.seq);
  const m = new Map();
  for (const e of ms) if (typeof e.data[name] === 'number' && typeof e.data.step === 'number') m.set(e.data.step, e.data[name]);
  return [...m.entries()].sort((a, b) => a[0] - b[0]);
}

/* Redraws both charts once per animation frame at most. */
function jobRedrawCharts(v) {
  if (v.chartQueued) return;
  v.chartQueued = true;
  requestAnimationFrame(() => {
    v.chartQueued = false;
    drawChart(v.lossSvg, [{name: 'training loss', cls: 'train', points: jobMetricPoints(v, 'train_loss')},
      {name: 'validation loss', cls: 'valid', points: jobMetricPoints(v, 'valid_loss'), dots: true}],
    {width: 960, height: 300, empty: 'No loss reported yet'});
    drawChart(v.lrSvg, [{name: 'learning rate', cls: 'lr', points: jobMetricPoints(v, 'learning_rate')}],
      {zero: true, exp: true, empty: 'No learning rate reported yet'});
  });
}

function jobRenderLog(v) {
  const newest = [...v.events.values()].sort((a, b) => b.seq - a.seq).slice(0, 500);
  fill(v.log, ...newest.map((e) => el('li', {'data-seq': e.seq},
    el('time', {datetime: new Date(e.created_at * 1000).toISOString(), text: fmtTime(e.created_at)}),
    el('span', {className: `lvl-${e.level}`, text: e.message}))));
}

/* Takes events from the list or the stream (duplicates ignored) and
 * redraws what they change: the log, the charts, the progress table (the
 * newest metrics, without waiting for a poll), and on a message (a status
 * change, a checkpoint) the job and its checkpoints. */
function jobAddEvents(v, list) {
  let added = 0;
  for (const e of list) {
    const seq = Number(String(e.id).replace('ftevent-', ''));
    if (!seq || v.events.has(seq)) continue;
    e.seq = seq;
    v.events.set(seq, e);
    if (seq > v.lastSeq) v.lastSeq = seq;
    added++;
  }
  if (!added) return;
  jobRenderLog(v);
  jobRedrawCharts(v);
  const m = list.filter((e) => e.type === 'metrics' && e.data).sort((a, b) => b.seq - a.seq)[0];
  const job = v.job;
  if (m && job && job.status === 'running' && m.seq === v.lastSeq && job.progress) {
    for (const k of ['step', 'total_steps', 'epoch', 'train_loss', 'valid_loss', 'tokens_per_second', 'eta_seconds'])
      if (m.data[k] !== undefined && m.data[k] !== null) job.progress[k] = m.data[k];
    jobRenderSummary(v);
  }
  if (list.some((e) => e.type === 'message')) { jobRefresh(v); jobRefreshCheckpoints(v); }
}

/* ---- reloads from the API ------------------------------------------------------- */

/* GETs the job again (one at a time) and redraws it. */
async function jobRefresh(v) {
  if (v.jobInflight) return;
  v.jobInflight = true;
  try {
    v.job = await api('GET', v.path, {signal: v.ctl.signal});
    jobRender(v);
    if (TERMINAL.includes(v.job.status)) jobRefreshFiles(v);
  } catch (e) {
    if (e.name !== 'AbortError') toast(e.message);
  } finally {
    v.jobInflight = false;
  }
}

async function jobRefreshCheckpoints(v) {
  let r;
  try {
    r = await api('GET', `${v.path}/checkpoints?limit=100`, {signal: v.ctl.signal});
  } catch (e) {
    if (e.name !== 'AbortError') fill(v.ckpts, errorBox(e));
    return;
  }
  if (!r.data.length) { fill(v.ckpts, el('p', {className: 'muted', text: 'No checkpoints yet.'})); return; }
  fill(v.ckpts, checkpointsTable(r.data));
}

/* Checkpoints (step, losses, model id), each with "Try it" (the playground
 * with the checkpoint chosen; it offers to build the merged model a
 * checkpoint is served through) and a .tar download. */
function checkpointsTable(list) {
  return el('table', {className: 'stack', id: 'checkpoints-table'},
    el('thead', {}, el('tr', {}, ['Step', 'Training loss', 'Validation loss', 'Model', 'Created', '']
      .map((c) => el('th', {scope: 'col', text: c})))),
    el('tbody', {}, list.map((c) => el('tr', {},
      el('td', {'data-label': 'Step', text: String(c.step_number)}),
      el('td', {'data-label': 'Training loss', text: fmtNum(c.metrics.train_loss)}),
      el('td', {'data-label': 'Validation loss', text: fmtNum(c.metrics.valid_loss)}),
      el('td', {'data-label': 'Model', className: 'mono small', text: c.fine_tuned_model_checkpoint}),
      el('td', {'data-label': 'Created', text: fmtTime(c.created_at)}),
      el('td', {'data-label': ''}, el('div', {className: 'row'}, tryItLink(c.fine_tuned_model_checkpoint),
        el('button', {type: 'button', text: 'Download (.tar)',
          'aria-label': `Download ${c.fine_tuned_model_checkpoint} (.tar)`,
          onclick: (ev) => download(`/v1/models/${encodeURIComponent(c.fine_tuned_model_checkpoint)}/archive`,
            `${archiveName(c.fine_tuned_model_checkpoint)}.tar`, ev.currentTarget)})))))));
}

/* The fine-tuned model once there is one (drawn once per model): "Try it"
 * (the playground) and its files. */
function jobRefreshFiles(v) {
  const model = v.job.fine_tuned_model;
  if (!model) {
    fill(v.files, el('p', {className: 'muted',
      text: v.job.status === 'succeeded' ? '—' : 'The merged model appears here when the job succeeds.'}));
    return;
  }
  if (v.filesShown === model) return;
  v.filesShown = model;
  fill(v.files, el('div', {className: 'row spread'}, el('p', {className: 'mono', text: model}), tryItLink(model)),
    modelFiles(model, v.ctl.signal));
}

/* ---- actions -------------------------------------------------------------------- */

/* POSTs pause, resume or cancel (name) and shows the outcome; a resumed
 * job is followed live again. */
async function jobTransition(v, name, verb, button) {
  button.disabled = true;
  try {
    v.job = await api('POST', `${v.path}/${name}`, {json: {}});
    jobRender(v);
    const j = v.job;
    const what = j.cancel_requested ? 'cancel requested; the job stops within one step'
      : j.pause_requested ? 'pause requested; the job pauses after a checkpoint' : `job is now ${j.status}`;
    toast(`${verb}: ${what}`);
    if (name === 'resume' && !v.streaming) jobStartLive(v);
  } catch (e) {
    toast(`${verb} failed: ${e.message}`);
    jobRefresh(v);
  }
}
