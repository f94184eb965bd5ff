/* models.js: the models page (#/models: "Try it" opens one in the
 * playground, playground.js) and the file list of one model
 * (name, size, sha256, download; the whole model as a tar), which the job
 * page shows for its fine-tuned model too. */
'use strict';

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
          el('td', {'data-label': ''}, el('div', {className: 'row'}, tryItLink(m.id), btn))), filesRow];
      }))));
  })();
  focusMain();
}

/* A model id as a file name: ':' and '/' become '_' (as in the archive). */
function archiveName(modelId) { return modelId.replace(/[:/]/g, '_'); }

/* Has a worker build checkpoint modelId's merged model (the directory chat
 * and downloads use): POSTs an export of format hf, or follows the one
 * already under way (409: one export of a model at a time), polling it
 * every second and calling onStatus(export) while it is queued or running.
 * Resolves to the ended export (succeeded, or failed with its error);
 * rejects with an ApiError or the AbortError of signal. */
async function buildMergedModel(modelId, signal, onStatus) {
  const base = `/v1/models/${encodeURIComponent(modelId)}`;
  let x;
  try {
    x = await api('POST', `${base}/exports`, {json: {format: 'hf'}, signal});
  } catch (e) {
    if (e.status !== 409) throw e;
    const r = await api('GET', `${base}/exports`, {signal});
    x = r.data.find((y) => y.format === 'hf' && (y.status === 'queued' || y.status === 'running'));
    if (!x) throw e; /* a GGUF export is under way */
  }
  while (x.status === 'queued' || x.status === 'running') {
    if (onStatus) onStatus(x);
    await new Promise((res) => setTimeout(res, 1000));
    x = await api('GET', `${base}/exports/${encodeURIComponent(x.id)}`, {signal});
  }
  return x;
}

/* The files of a model (name, size, sha256, download) and its archive. A
 * checkpoint's merged model (merged/ files) is built on request
 * (buildMergedModel), then the list is drawn again. */
function modelFiles(modelId, signal) {
  const box = el('div', {className: 'model-files'}, el('p', {className: 'muted', text: 'Loading files…'}));
  const base = `/v1/models/${encodeURIComponent(modelId)}`;
  const ckpt = /:ckpt-step-\d+$/.test(modelId);
  async function buildMerged(btn) {
    btn.disabled = true;
    btn.textContent = 'Building merged model…';
    try {
      const x = await buildMergedModel(modelId, signal);
      if (x.status !== 'succeeded') throw new ApiError(0, {error: {message: `the merged model could not be built: ${x.error || x.status}`}});
      load();
    } catch (e) {
      if (e.name !== 'AbortError') box.append(errorBox(e));
      btn.disabled = false;
      btn.textContent = 'Build merged model';
    }
  }
  async function load() {
    try {
      const r = await api('GET', `/v1/models/${encodeURIComponent(modelId)}/files`, {signal});
      const total = r.data.reduce((s, f) => s + f.bytes, 0);
      const hasAdapter = r.data.some((f) => f.name.startsWith('adapter/'));
      /* the merged model: a checkpoint's merged/ files, a fine-tune's
       * files beside its adapter/ */
      const hasMerged = ckpt ? r.data.some((f) => f.name.startsWith('merged/'))
        : hasAdapter && r.data.some((f) => !f.name.startsWith('adapter/'));
      const mergedBtn = hasMerged ? el('button', {type: 'button', 'data-part': 'merged', text: 'Merged (.tar)',
        onclick: (ev) => download(`${base}/archive?part=merged`, `${archiveName(modelId)}-merged.tar`, ev.currentTarget)})
        : ckpt ? el('button', {type: 'button', 'data-part': 'build-merged', text: 'Build merged model',
          title: 'A worker builds the checkpoint as a Hugging Face directory (POST exports {"format": "hf"})',
          onclick: (ev) => buildMerged(ev.currentTarget)}) : null;
      fill(box,
        el('div', {className: 'row'}, el('button', {type: 'button', className: 'primary', text: 'Download all (.tar)',
          onclick: (ev) => download(`${base}/archive`, `${archiveName(modelId)}.tar`, ev.currentTarget)}),
        /* A fine-tune or checkpoint with a PEFT adapter: the merged model
         * and the adapter, each as its own .tar. */
        ...[mergedBtn, hasAdapter ? el('button', {type: 'button', 'data-part': 'adapter', text: 'Adapter (.tar)',
          onclick: (ev) => download(`${base}/archive?part=adapter`, `${archiveName(modelId)}-adapter.tar`, ev.currentTarget)}) : null,
        ].filter(Boolean),
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
  }
  load();
  return box;
}
