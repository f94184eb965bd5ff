/* playground.js: the Playground (#/playground?model=ID, and with
 * &compare=ID2 its compare mode): chat with a model through POST
 * /v1/chat/completions. The answer streams in: fetch reads the reply's
 * ReadableStream of Server-Sent Events ("data:" chunks, then
 * "data: [DONE]"; sseBlock of live.js parses a block). A system prompt,
 * temperature and max tokens go with every request; Stop aborts the fetch,
 * and the server cancels the generation when its client goes. Compare mode
 * sends each message to two models at once (by default a fine-tuned model
 * and its base), side by side, each panel with its own history.
 *
 * Models come from GET /v1/models (base and fine-tuned); a model named in
 * the link that the list lacks (a checkpoint: a job page's "Try it") is
 * added from GET /v1/models/{id}. Errors of the API (a 503 "no serving
 * worker", a 400 naming a field) are shown where they belong. A checkpoint
 * answers 400 model_not_ready until its merged model is built: the answer's
 * entry then offers "Build merged model" (an hf export, followed), and
 * sends the message again once it is built (pgNotReady). */
'use strict';

/* The playground's link with model chosen (and other beside it). */
function playgroundHref(model, other) {
  const q = new URLSearchParams({model});
  if (other) q.set('compare', other);
  return `#/playground?${q}`;
}

/* A "Try it" link to the playground for model. */
function tryItLink(model) {
  return el('a', {className: 'button', href: playgroundHref(model), 'data-try': model,
    'aria-label': `Try ${model} in the playground`, text: 'Try it'});
}

function renderPlayground(query) {
  const pg = setPage('Playground', 'playground');
  const v = pgView(query);
  pg.cleanups.push(() => { v.ctl.abort(); pgStop(v); });
  main.append(...pgLayout(v));
  pgStart(v);
  focusMain();
}

/* The page's state: the models, the two panels (the second shown in compare
 * mode), the settings' fields. Ends with v.ctl.abort(). */
function pgView(query) {
  const num = (id, attrs) => el('input', Object.assign({id, name: id.slice(3), type: 'number', inputmode: 'decimal',
    'aria-describedby': `${id}-error`}, attrs));
  const v = {
    ctl: new AbortController(),
    want: query.get('model') || '',
    wantB: query.get('compare') || '',
    models: new Map(),      /* id -> the API's model object */
    busy: 0,                /* answers streaming */
    error: el('div', {id: 'pg-error'}),
    compare: el('input', {id: 'pg-compare', type: 'checkbox', checked: query.has('compare')}),
    system: el('textarea', {id: 'pg-system', name: 'system', rows: 2,
      placeholder: 'You are a helpful assistant.'}),
    temperature: num('pg-temperature', {min: 0, max: 2, step: 0.1, value: 0.7}),
    maxTokens: num('pg-max_tokens', {min: 1, step: 1, value: 256, inputmode: 'numeric'}),
    input: el('textarea', {id: 'pg-input', name: 'message', rows: 3, required: true,
      'aria-describedby': 'pg-input-hint pg-input-error', placeholder: 'Ask something…'}),
    send: el('button', {type: 'submit', id: 'pg-send', className: 'primary', text: 'Send'}),
    stop: el('button', {type: 'button', id: 'pg-stop', disabled: true, text: 'Stop'}),
    clear: el('button', {type: 'button', id: 'pg-clear', text: 'Clear chat'}),
  };
  v.panels = [pgPanel('a', 'pg-model', 'Model'), pgPanel('b', 'pg-model-b', 'Second model')];
  return v;
}

/* One side of the chat: its model, the messages so far (sent again with the
 * next one) and the transcript drawn from them. */
function pgPanel(name, selectId, label) {
  const select = el('select', {id: selectId, name: selectId.slice(3)});
  const p = {
    name, select, history: [], ctl: null,
    log: el('ol', {className: 'chat', role: 'log', 'aria-live': 'polite', 'aria-label': `Conversation (${label})`}),
  };
  p.card = el('section', {className: 'card pg-panel', id: `pg-panel-${name}`, 'data-panel': name},
    el('div', {className: 'field'}, el('label', {for: selectId, text: label}), select), p.log);
  return p;
}

function pgLayout(v) {
  const field = (input, label, hint) => el('div', {className: 'field'},
    el('label', {for: input.id, text: label}), input,
    hint ? el('p', {className: 'hint', text: hint}) : null,
    el('p', {className: 'error', id: `${input.id}-error`}));
  const form = el('form', {className: 'card', id: 'pg-form', novalidate: true},
    el('div', {className: 'field'},
      el('label', {for: 'pg-input', text: 'Message'}), v.input,
      el('p', {className: 'hint', id: 'pg-input-hint', text: 'Enter sends; Shift+Enter starts a new line; Esc stops the answer.'}),
      el('p', {className: 'error', id: 'pg-input-error', role: 'alert'})),
    el('div', {className: 'row'}, v.send, v.stop, v.clear));
  return [
    el('h1', {text: 'Playground'}),
    v.error,
    el('details', {className: 'card pg-settings', open: true},
      el('summary', {text: 'Settings'}),
      field(v.system, 'System prompt', 'Optional; sent first with every message.'),
      el('div', {className: 'fields'},
        field(v.temperature, 'Temperature', '0 to 2; 0 always picks the likeliest token.'),
        field(v.maxTokens, 'Max tokens', 'The most tokens of each answer.')),
      el('label', {className: 'check', for: 'pg-compare'}, v.compare,
        'Compare: send each message to a second model too, side by side')),
    el('div', {className: 'grid2', id: 'pg-panels'}, v.panels.map((p) => p.card)),
    form,
  ];
}

/* ---- models ---------------------------------------------------------------------- */

/* Loads the models, fills both selects (the link's choice, else the
 * defaults) and wires the controls. */
async function pgStart(v) {
  let r;
  try {
    r = await api('GET', '/v1/models', {signal: v.ctl.signal});
  } catch (e) {
    if (e.name !== 'AbortError') fill(v.error, errorBox(e));
    return;
  }
  for (const m of r.data) v.models.set(m.id, m);
  for (const id of [v.want, v.wantB]) {
    if (!id || v.models.has(id)) continue;
    try {
      v.models.set(id, await api('GET', `/v1/models/${encodeURIComponent(id)}`, {signal: v.ctl.signal}));
    } catch (e) {
      if (e.name === 'AbortError') return;
      v.error.append(el('div', {className: 'alert', role: 'alert', text: `The model ${id} cannot be used: ${e.message}`}));
    }
  }
  if (!v.models.size) {
    fill(v.error, el('div', {className: 'alert', role: 'alert', text: 'There is no model to chat with.'}));
    return;
  }
  const [a, b] = v.panels;
  for (const p of v.panels) pgFillSelect(v, p.select);
  a.select.value = v.models.has(v.want) ? v.want : pgDefaultModel(v);
  b.select.value = v.models.has(v.wantB) ? v.wantB : pgPartner(v, a.select.value);
  pgWire(v);
  pgShowCompare(v);
}

function pgFillSelect(v, select) {
  const groups = [['base', 'Base models'], ['fine_tuned', 'Fine-tuned models'], ['checkpoint', 'Checkpoints']];
  const ms = [...v.models.values()].sort((x, y) => (y.created - x.created) || x.id.localeCompare(y.id));
  fill(select, groups.map(([kind, label]) => {
    const of = ms.filter((m) => m.kind === kind);
    return of.length ? el('optgroup', {label}, of.map((m) => el('option', {value: m.id, text: m.id}))) : null;
  }));
}

/* The newest fine-tuned model, else the first model. */
function pgDefaultModel(v) {
  const ms = [...v.models.values()];
  const ft = ms.filter((m) => m.kind === 'fine_tuned').sort((x, y) => y.created - x.created)[0];
  return (ft || ms[0]).id;
}

/* The model to compare id with: its base; for a base, its newest
 * fine-tune; else any other model. */
function pgPartner(v, id) {
  const m = v.models.get(id);
  if (m && m.parent && v.models.has(m.parent)) return m.parent;
  const ms = [...v.models.values()].sort((x, y) => y.created - x.created);
  const child = ms.find((x) => x.parent === id && x.kind === 'fine_tuned');
  return (child || ms.find((x) => x.id !== id) || m).id;
}

/* ---- controls ------------------------------------------------------------------- */

function pgWire(v) {
  const [a, b] = v.panels;
  v.compare.addEventListener('change', () => {
    if (v.compare.checked) {
      b.select.value = pgPartner(v, a.select.value);
      b.history = a.history.slice();
      fill(b.log, [...a.log.children].map((li) => li.cloneNode(true)));
    }
    pgShowCompare(v);
  });
  for (const p of v.panels) p.select.addEventListener('change', () => pgShowCompare(v));
  v.input.form.addEventListener('submit', (ev) => { ev.preventDefault(); pgSend(v); });
  v.input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); pgSend(v); }
    if (ev.key === 'Escape' && v.busy) { ev.preventDefault(); pgStop(v); }
  });
  v.stop.addEventListener('click', () => pgStop(v));
  v.clear.addEventListener('click', () => {
    for (const p of v.panels) { p.history = []; fill(p.log); }
    v.input.focus();
  });
}

/* Shows or hides the second panel, and keeps the link saying what is
 * chosen (replaceState: no hashchange, the page stays). */
function pgShowCompare(v) {
  const [a, b] = v.panels;
  b.card.hidden = !v.compare.checked;
  const href = playgroundHref(a.select.value, v.compare.checked ? b.select.value : null);
  if (location.hash !== href) history.replaceState(null, '', href);
}

function pgActive(v) { return v.compare.checked ? v.panels : [v.panels[0]]; }

function pgSetBusy(v, n) {
  v.busy = n;
  v.send.disabled = n > 0;
  v.stop.disabled = n === 0;
  v.clear.disabled = n > 0;
  v.compare.disabled = n > 0;
  for (const p of v.panels) p.select.disabled = n > 0;
}

function pgStop(v) { for (const p of v.panels) if (p.ctl) p.ctl.abort(); }

/* The settings as request fields, or null with the faults shown under
 * their fields (the first one focused). */
function pgSettings(v) {
  const t = v.temperature, m = v.maxTokens;
  const temperature = Number(t.value), maxTokens = Number(m.value);
  const bad = [];
  pgFieldError(t, t.value.trim() === '' || !isFinite(temperature) || temperature < 0 || temperature > 2
    ? 'temperature must be a number between 0 and 2' : '', bad);
  pgFieldError(m, m.value.trim() === '' || !Number.isInteger(maxTokens) || maxTokens < 1
    ? 'max tokens must be a whole number of at least 1' : '', bad);
  if (bad.length) { bad[0].focus(); return null; }
  return {system: v.system.value.trim(), temperature, max_tokens: maxTokens};
}

function pgFieldError(input, msg, bad) {
  document.getElementById(`${input.id}-error`).textContent = msg;
  if (msg) { input.setAttribute('aria-invalid', 'true'); bad.push(input); } else input.removeAttribute('aria-invalid');
}

/* ---- chatting -------------------------------------------------------------------- */

/* Sends the message to the panel(s) on screen, all streaming at once. */
async function pgSend(v) {
  if (v.busy || !v.models.size) return;
  const s = pgSettings(v);
  if (!s) return;
  const content = v.input.value;
  const inputError = document.getElementById('pg-input-error');
  if (!content.trim()) {
    inputError.textContent = 'Type a message first.';
    v.input.focus();
    return;
  }
  inputError.textContent = '';
  v.input.value = '';
  const panels = pgActive(v);
  pgSetBusy(v, panels.length);
  const results = await Promise.all(panels.map(async (p) => {
    const messages = [...(s.system ? [{role: 'system', content: s.system}] : []), ...p.history, {role: 'user', content}];
    p.log.append(pgMessage('user', content));
    const r = await pgAsk(v, p, messages, s);
    if (r.text) p.history.push({role: 'user', content}, {role: 'assistant', content: r.text});
    pgSetBusy(v, v.busy - 1);
    return r;
  }));
  /* Nothing came back: the message is kept to try again. */
  if (results.every((r) => !r.text) && !v.input.value) v.input.value = content;
  if (!v.ctl.signal.aborted) v.input.focus();
}

/* A transcript entry; its .text child holds the words. */
function pgMessage(role, text) {
  return el('li', {className: `msg ${role}`},
    el('div', {className: 'who', text: role === 'user' ? 'You' : 'Assistant'}),
    el('div', {className: 'text', text}));
}

/* Streams one answer into a new transcript entry of p. Resolves to
 * {text, state}: state "done", "stopped" (Stop, or the page left) or
 * "error" (shown in the entry). */
async function pgAsk(v, p, messages, s) {
  const li = pgMessage('assistant', '');
  const out = li.querySelector('.text');
  const meta = el('div', {className: 'meta'});
  li.append(meta);
  li.dataset.state = 'streaming';
  li.dataset.model = p.select.value;
  p.log.append(li);
  p.log.setAttribute('aria-busy', 'true');
  pgScroll(p.log);
  p.ctl = new AbortController();
  const st = {text: '', finish: null, usage: null, t0: performance.now(), tFirst: 0};
  const body = {model: p.select.value, messages, stream: true, stream_options: {include_usage: true},
    temperature: s.temperature, max_tokens: s.max_tokens};
  try {
    await pgStream(body, p.ctl.signal, (chunk) => {
      const c = chunk.choices && chunk.choices[0];
      const delta = c && c.delta && c.delta.content;
      if (delta) {
        if (!st.tFirst) st.tFirst = performance.now();
        st.text += delta;
        out.textContent = st.text;
        li.dataset.updates = String(Number(li.dataset.updates || 0) + 1);
        pgScroll(p.log);
      }
      if (c && c.finish_reason) st.finish = c.finish_reason;
      if (chunk.usage) st.usage = chunk.usage;
    });
    li.dataset.state = 'done';
    li.dataset.finish = st.finish || '';
    meta.textContent = pgStats(st);
  } catch (e) {
    if (e.name === 'AbortError') {
      li.dataset.state = 'stopped';
      meta.textContent = st.text ? 'Stopped.' : 'Stopped before the first token.';
    } else if (e.status === 400 && e.code === 'model_not_ready') {
      li.dataset.state = 'not_ready';
      pgNotReady(v, p, li, e, messages, s);
    } else {
      li.dataset.state = 'error';
      li.append(el('div', {className: 'alert', role: 'alert',
        text: `${e.status ? `HTTP ${e.status}: ` : ''}${e.message}`}));
    }
  } finally {
    p.ctl = null;
    p.log.removeAttribute('aria-busy');
    pgScroll(p.log);
  }
  return {text: st.text, state: li.dataset.state};
}

/* A checkpoint without its merged model yet (400 model_not_ready) in entry
 * li of panel p: the API's message and a "Build merged model" button that
 * has a worker build it (buildMergedModel of models.js), saying how far the
 * export is; once it has succeeded the same request (messages, settings s)
 * goes again (pgResend). A failed export shows its error, and the button
 * tries again. */
function pgNotReady(v, p, li, e, messages, s) {
  const model = li.dataset.model;
  const status = el('p', {className: 'build-status small muted', role: 'status'});
  const btn = el('button', {type: 'button', 'data-action': 'build-merged', text: 'Build merged model',
    'aria-label': `Build the merged model of ${model}`,
    title: 'A worker builds the checkpoint as a Hugging Face directory (POST exports {"format": "hf"})'});
  btn.addEventListener('click', async () => {
    btn.disabled = true;
    li.querySelectorAll('.build-failed').forEach((n) => n.remove());
    status.textContent = 'Building the merged model: starting…';
    let why;
    try {
      const x = await buildMergedModel(model, v.ctl.signal,
        (y) => { status.textContent = `Building the merged model: ${y.status}…`; });
      if (x.status === 'succeeded') {
        status.textContent = 'Built; sending the message again…';
        pgResend(v, p, li, status, messages, s);
        return;
      }
      why = x.error || x.status;
    } catch (err) {
      if (err.name === 'AbortError') return;
      why = `${err.status ? `HTTP ${err.status}: ` : ''}${err.message}`;
    }
    status.textContent = '';
    li.append(el('div', {className: 'alert build-failed', role: 'alert',
      text: `The merged model could not be built: ${why}`}));
    btn.disabled = false;
  });
  li.append(el('div', {className: 'alert', role: 'alert', text: `HTTP ${e.status}: ${e.message}`}),
    el('div', {className: 'row build'}, btn, status));
}

/* Sends a not-ready entry's request again, in its place, when nothing has
 * happened since: it is still its panel's last entry, on screen, for the
 * panel's model. Otherwise the entry only says the model is ready. */
async function pgResend(v, p, li, status, messages, s) {
  if (!li.isConnected || p.log.lastElementChild !== li || p.select.value !== li.dataset.model ||
      !pgActive(v).includes(p)) {
    status.textContent = 'Built: the model is ready; send the message again.';
    return;
  }
  const content = messages[messages.length - 1].content;
  /* focus left with the entry, or with its button when it was disabled:
   * the message box takes it */
  const a = document.activeElement;
  const lost = !a || a === document.body || li.contains(a);
  li.remove();
  pgSetBusy(v, v.busy + 1);
  if (lost) v.input.focus();
  const r = await pgAsk(v, p, messages, s);
  if (r.text) {
    p.history.push({role: 'user', content}, {role: 'assistant', content: r.text});
    /* the message kept to try again has gone */
    if (v.input.value === content) v.input.value = '';
  }
  pgSetBusy(v, v.busy - 1);
}

/* "12 tokens · 0.35 s to the first · 40.1 tokens/s · stop". */
function pgStats(st) {
  const n = st.usage ? st.usage.completion_tokens : null;
  const parts = [];
  if (n !== null) parts.push(`${n} token${n === 1 ? '' : 's'}`);
  if (st.tFirst) parts.push(`${((st.tFirst - st.t0) / 1000).toFixed(2)} s to the first`);
  const secs = (performance.now() - (st.tFirst || st.t0)) / 1000;
  if (n > 1 && secs > 0) parts.push(`${fmtNum((n - 1) / secs, 1)} tokens/s`);
  if (st.finish) parts.push(st.finish === 'length' ? 'stopped at max tokens' : st.finish);
  return parts.join(' · ');
}

/* Keeps a transcript scrolled to its end while the reader is near it. */
function pgScroll(log) {
  if (log.scrollHeight - log.scrollTop - log.clientHeight < 80) log.scrollTop = log.scrollHeight;
}

/* POSTs a streaming chat request and calls onChunk with each JSON chunk
 * until "data: [DONE]". Rejects with an ApiError (the reply's status and
 * message; an error chunk mid-stream; a stream cut before [DONE]) or the
 * AbortError of signal. */
async function pgStream(body, signal, onChunk) {
  let resp;
  try {
    resp = await fetch('/v1/chat/completions', {method: 'POST', signal, cache: 'no-store',
      headers: {Authorization: `Bearer ${key()}`, 'Content-Type': 'application/json', Accept: 'text/event-stream'},
      body: JSON.stringify(body)});
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, {error: {message: `the server did not answer (${e.message})`}});
  }
  if (!resp.ok || !resp.body) {
    let data = null;
    try { data = await resp.json(); } catch (e) { /* not JSON */ }
    if (resp.status === 401) signOut('Your API key was refused; sign in again.');
    throw new ApiError(resp.status, data);
  }
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true}).replace(/\r\n?/g, '\n');
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const ev = sseBlock(buf.slice(0, cut));
        buf = buf.slice(cut + 2);
        if (!ev.data) continue;
        if (ev.data === '[DONE]') return;
        let chunk;
        try { chunk = JSON.parse(ev.data); } catch (e) { continue; /* skip a malformed chunk */ }
        if (chunk.error) throw new ApiError(0, chunk);
        onChunk(chunk);
      }
    }
  } catch (e) {
    if (e.name === 'AbortError' || e instanceof ApiError) throw e;
    throw new ApiError(0, {error: {message: `the answer was cut off (${e.message})`}});
  } finally {
    reader.cancel().catch(() => {});
  }
  throw new ApiError(0, {error: {message: 'the answer was cut off: the stream ended before [DONE]'}});
}
