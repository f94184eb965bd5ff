/* new.js: the new-job form (#/new): upload a JSONL file (bad lines listed),
 * choose model, files and method, set hyperparameters, create the job.
 * Each hyperparameter's bounds and integer type come from the served
 * contract (GET /v1/openapi.json, the create-job request's schema), never
 * from a copy here; until it arrives, or when it cannot be read, the form
 * checks no bounds and the server's 400 (which names the field) speaks. */
'use strict';

/* The hyperparameter fields: labels, defaults (the documented ones) and
 * hints only. methods: the methods a field applies to (all if absent);
 * auto: empty means "auto"; list: comma-separated names; choices: a select;
 * bool: a checkbox, sent as true when checked and left out (the default,
 * false) when not. */
const HP = [
  {k: 'n_epochs', label: 'Epochs', def: 3},
  {k: 'batch_size', label: 'Batch size', def: 4},
  {k: 'learning_rate', label: 'Learning rate', def: 2e-4},
  {k: 'rank', label: 'r (rank)', def: 8, methods: ['lora', 'delta_lora']},
  {k: 'alpha', label: 'α (alpha)', def: 16, methods: ['lora', 'delta_lora']},
  {k: 'lambda', label: 'λ (lambda)', def: 0.5, methods: ['delta_lora']},
  {k: 'start_step', label: 'K (start step)', def: '', auto: true, methods: ['delta_lora'],
    hint: 'empty = auto: 10% of the steps'},
  {k: 'target_modules', label: 'Target modules', def: 'q,v', list: true, methods: ['lora', 'delta_lora'],
    hint: 'comma-separated: q k v o gate up down c_attn (or *_proj)'},
  {k: 'seq_len', label: 'Sequence length', def: 256},
  {k: 'warmup_steps', label: 'Warm-up steps', def: 0},
  {k: 'lr_scheduler', label: 'LR schedule', def: 'linear', choices: ['linear', 'cosine', 'constant']},
  {k: 'weight_decay', label: 'Weight decay', def: 0},
  {k: 'max_grad_norm', label: 'Max grad norm', def: 1.0},
  {k: 'gradient_accumulation_steps', label: 'Gradient accumulation', def: 1},
  {k: 'max_steps', label: 'Max steps', def: 0, hint: '0 = the epochs decide'},
  {k: 'checkpoint_interval', label: 'Checkpoint every', def: 0, hint: 'steps; 0 = the worker chooses'},
  {k: 'eval_interval', label: 'Evaluate every', def: 0, hint: 'steps; 0 = the worker chooses'},
  {k: 'seed', label: 'Seed', def: 42},
  {k: 'packing', label: 'Pack rows into sequences', def: false, bool: true,
    hint: 'several rows in each sequence of up to Sequence length tokens, attention kept within ' +
      'each row: less padding, fewer steps; Batch size then counts packed sequences'},
];
const METHODS = [['delta_lora', 'Delta-LoRA'], ['lora', 'LoRA'], ['full', 'Full fine-tuning']];

/* ---- limits from the contract ----------------------------------------------- */

/* The create-job request's hyperparameter limits in the contract doc:
 * {method: {name: limit}} for each method of the form, from
 * paths./v1/fine_tuning/jobs.post.requestBody.content.application/json.schema
 * (CreateJob) -> properties.method (Method) -> properties.METHOD.properties
 * .hyperparameters (Hyperparameters) -> properties.NAME, or CreateJob's own
 * hyperparameters when the method has none. A limit is {int, min, minEx,
 * max, maxEx} (each bound only where the contract gives it) or {names} for
 * a list of names; null when the contract does not know the field. */
function hpLimitsFromSpec(doc) {
  const op = doc && doc.paths && doc.paths['/v1/fine_tuning/jobs'] && doc.paths['/v1/fine_tuning/jobs'].post;
  const body = op && op.requestBody && op.requestBody.content && op.requestBody.content['application/json'];
  const create = specDeref(doc, body && body.schema);
  if (!create || !create.properties) throw new Error('the contract has no create-job request schema');
  const props = (s) => { s = specDeref(doc, s); return (s && s.properties) || {}; };
  const common = props(create.properties.hyperparameters);
  const methodProps = props(create.properties.method);
  const out = {};
  for (const [m] of METHODS) {
    const mine = props(props(methodProps[m]).hyperparameters);
    const hp = Object.keys(mine).length ? mine : common;
    out[m] = {};
    for (const h of HP) out[m][h.k] = hp[h.k] ? specLimit(doc, hp[h.k]) : null;
  }
  return out;
}

/* One property's limit: the first numeric alternative of the schema (itself
 * or one of its oneOf/anyOf; the other is "auto"), or the names of an array
 * of enumerated strings. Reads OpenAPI 3.0's boolean exclusiveMinimum /
 * exclusiveMaximum and 3.1's numeric ones. */
function specLimit(doc, schema) {
  schema = specDeref(doc, schema) || {};
  const alts = [schema, ...(schema.oneOf || []), ...(schema.anyOf || [])].map((s) => specDeref(doc, s) || {});
  const num = alts.find((s) => s.type === 'integer' || s.type === 'number');
  if (num) {
    const lim = {int: num.type === 'integer'};
    if (typeof num.minimum === 'number') { lim.min = num.minimum; lim.minEx = num.exclusiveMinimum === true; }
    if (typeof num.exclusiveMinimum === 'number') { lim.min = num.exclusiveMinimum; lim.minEx = true; }
    if (typeof num.maximum === 'number') { lim.max = num.maximum; lim.maxEx = num.exclusiveMaximum === true; }
    if (typeof num.exclusiveMaximum === 'number') { lim.max = num.exclusiveMaximum; lim.maxEx = true; }
    return lim;
  }
  const arr = alts.find((s) => s.type === 'array');
  const items = arr && specDeref(doc, arr.items);
  return items && Array.isArray(items.enum) ? {names: items.enum.map(String)} : {};
}

/* "an integer between 1 and 256", "a number > 0 and <= 1", "an integer >= 0",
 * "a number": what a limit allows, in words. */
function limitText(lim) {
  const what = lim.int ? 'an integer' : 'a number';
  const lo = lim.min !== undefined, hi = lim.max !== undefined;
  if (lim.int && lo && hi && !lim.minEx && !lim.maxEx) return `${what} between ${lim.min} and ${lim.max}`;
  const parts = [];
  if (lo) parts.push(`${lim.minEx ? '>' : '>='} ${lim.min}`);
  if (hi) parts.push(`${lim.maxEx ? '<' : '<='} ${lim.max}`);
  return parts.length ? `${what} ${parts.join(' and ')}` : what;
}

/* Checks one field's text against its limit (null: none known); returns
 * [value, error]. */
function checkField(h, lim, raw) {
  const s = raw.trim();
  if (h.choices) return h.choices.includes(s) ? [s, ''] : [null, `${h.k} must be one of ${h.choices.join(', ')}`];
  if (h.list) {
    const parts = s.split(',').map((x) => x.trim()).filter(Boolean);
    if (!parts.length) return [null, `${h.k} needs at least one module`];
    const bad = lim && lim.names && parts.find((p) => !lim.names.includes(p));
    return bad ? [null, `unknown module "${bad}"; use ${lim.names.join(', ')}`] : [parts.join(','), ''];
  }
  if (s === '' && h.auto) return ['auto', ''];
  if (s === '') return [null, `${h.k} is required`];
  const x = Number(s);
  if (!isFinite(x)) return [null, `${h.k} must be a number`];
  lim = lim || {};
  if ((lim.int && !Number.isInteger(x)) ||
      (lim.min !== undefined && (lim.minEx ? x <= lim.min : x < lim.min)) ||
      (lim.max !== undefined && (lim.maxEx ? x >= lim.max : x > lim.max)))
    return [null, `${h.k} must be ${limitText(lim)}`];
  return [x, ''];
}

/* ---- form fields ------------------------------------------------------------- */

/* A labelled input with its hint, its range line (when range) and its error
 * line: {wrap, input, err, range}. */
function field(id, label, input, hint, range) {
  const err = el('p', {className: 'error', id: `${id}-error`, 'aria-live': 'polite'});
  const rangeEl = range ? el('p', {className: 'hint', id: `${id}-range`}) : null;
  input.id = id;
  input.setAttribute('aria-describedby',
    [`${id}-error`, hint ? `${id}-hint` : '', range ? `${id}-range` : ''].filter(Boolean).join(' '));
  return {wrap: el('div', {className: 'field', id: `${id}-field`},
    el('label', {for: id, text: label}), input,
    hint ? el('p', {className: 'hint', id: `${id}-hint`, text: hint}) : null, rangeEl, err), input, err, range: rangeEl};
}
function setErr(f, msg) {
  f.err.textContent = msg || '';
  if (msg) f.input.setAttribute('aria-invalid', 'true'); else f.input.removeAttribute('aria-invalid');
}

/* A checkbox with its label beside it, its hint and its error line:
 * {wrap, input, err}. */
function checkboxField(id, label, input, hint) {
  const err = el('p', {className: 'error', id: `${id}-error`, 'aria-live': 'polite'});
  input.id = id;
  input.setAttribute('aria-describedby', [`${id}-error`, hint ? `${id}-hint` : ''].filter(Boolean).join(' '));
  return {wrap: el('div', {className: 'field wide', id: `${id}-field`},
    el('label', {className: 'check', for: id}, input, label),
    hint ? el('p', {className: 'hint', id: `${id}-hint`, text: hint}) : null, err), input, err, range: null};
}

/* One hyperparameter's field; f.limit() is its limit for the chosen method. */
function hpField(h, limitOf) {
  if (h.bool) {
    const f = checkboxField(`hp-${h.k}`, h.label, el('input', {type: 'checkbox', name: h.k, checked: h.def}), h.hint);
    f.h = h;
    f.limit = () => null;
    f.input.addEventListener('change', () => setErr(f, ''));
    return f;
  }
  const input = h.choices
    ? el('select', {name: h.k}, h.choices.map((c) => el('option', {value: c, text: c, selected: c === h.def})))
    : el('input', {name: h.k, value: String(h.def), inputmode: h.list ? 'text' : 'decimal',
      autocomplete: 'off', placeholder: h.auto ? 'auto' : null});
  const f = field(`hp-${h.k}`, h.label, input, h.hint, !h.choices && !h.list);
  f.h = h;
  f.limit = () => limitOf(h.k);
  input.addEventListener('change', () => setErr(f, checkField(h, f.limit(), input.value)[1]));
  return f;
}

/* Shows a numeric field's limit: the range line under it, the input's
 * data-minimum / data-maximum, a numeric keyboard for integers. */
function hpShowLimit(f) {
  if (!f.range) return;
  const lim = f.limit();
  for (const [name, v] of [['data-minimum', lim && lim.min], ['data-maximum', lim && lim.max]]) {
    if (typeof v === 'number') f.input.setAttribute(name, String(v)); else f.input.removeAttribute(name);
  }
  f.input.setAttribute('inputmode', lim && lim.int ? 'numeric' : 'decimal');
  f.range.textContent = lim && (lim.min !== undefined || lim.max !== undefined) ? limitText(lim) : '';
}

/* ---- the page ------------------------------------------------------------------ */

function renderNew() {
  const pg = setPage('New job', 'new');
  const ctl = new AbortController();
  pg.cleanups.push(() => ctl.abort());
  let limits = null; /* hpLimitsFromSpec's answer, once the contract is read */

  const model = field('model', 'Base model', el('select', {name: 'model'}, el('option', {value: '', text: 'Loading…'})));
  const method = field('method', 'Method', el('select', {name: 'method'},
    METHODS.map(([v, text]) => el('option', {value: v, text}))));
  const train = field('training_file', 'Training file', el('select', {name: 'training_file'}, el('option', {value: '', text: '—'})));
  const valid = field('validation_file', 'Validation file (optional)', el('select', {name: 'validation_file'}, el('option', {value: '', text: 'none'})));
  const suffix = field('suffix', 'Suffix (optional)', el('input', {name: 'suffix', maxlength: 64, autocomplete: 'off'}), 'letters, digits, _ and -; up to 64');
  const upload = field('upload', 'Upload a JSONL file', el('input', {type: 'file', name: 'upload', accept: '.jsonl,.json,application/jsonl,application/x-ndjson,text/plain'}),
    'Each line: {"text"}, {"prompt","completion"}, {"messages":[...]} or {"input_ids"}. Bad lines are listed below.');
  const uploadResult = el('div', {id: 'upload-result', 'aria-live': 'polite'});
  const hps = HP.map((h) => hpField(h, (k) => (limits && limits[method.input.value] ? limits[method.input.value][k] : null)));
  const limitsNote = el('p', {className: 'hint', id: 'limits-note'});
  const formErr = el('div', {id: 'form-error', 'aria-live': 'assertive'});
  const submit = el('button', {type: 'submit', className: 'primary', text: 'Create job'});
  const form = el('form', {id: 'new-job', novalidate: true, 'data-limits': 'loading'},
    el('h1', {text: 'New fine-tuning job'}),
    el('div', {className: 'card'}, el('h2', {text: 'Data'}), upload.wrap, uploadResult,
      el('div', {className: 'fields'}, train.wrap, valid.wrap)),
    el('div', {className: 'card'}, el('h2', {text: 'Model and method'}),
      el('div', {className: 'fields'}, model.wrap, method.wrap, suffix.wrap)),
    el('div', {className: 'card'}, el('h2', {text: 'Hyperparameters'}),
      el('p', {className: 'hint', text: 'Prefilled with the documented defaults.'}), limitsNote,
      el('div', {className: 'fields'}, hps.map((f) => f.wrap))),
    formErr, submit);
  main.append(form);

  /* Only the fields of the chosen method are shown, with its limits. */
  function showMethod() {
    for (const f of hps) {
      f.wrap.classList.toggle('hidden', !!f.h.methods && !f.h.methods.includes(method.input.value));
      hpShowLimit(f);
    }
  }
  method.input.addEventListener('change', showMethod);
  showMethod();

  apiContract().then((doc) => {
    if (ctl.signal.aborted) return;
    limits = hpLimitsFromSpec(doc);
    form.dataset.limits = 'contract';
    showMethod();
  }).catch((e) => {
    if (ctl.signal.aborted) return;
    form.dataset.limits = 'unavailable';
    limitsNote.textContent = `The limits could not be read from /v1/openapi.json (${e.message}); ` +
      'the server checks the values when the job is created.';
  });

  const choices = newJobChoices(model, train, valid, formErr, ctl.signal);
  choices();
  upload.input.addEventListener('change', () => newJobUpload(upload, uploadResult, train, choices, ctl.signal));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    newJobSubmit({model, method, train, valid, suffix, hps, formErr, submit});
  });
  focusMain();
}

/* A function that (re)loads the model and file choices, keeping what is
 * chosen; its argument (a file id) selects that training file. */
function newJobChoices(model, train, valid, formErr, signal) {
  return async (selectTrain) => {
    try {
      const [models, filesList] = await Promise.all([
        api('GET', '/v1/models', {signal}), api('GET', '/v1/files?purpose=fine-tune&limit=100', {signal})]);
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
  };
}

/* Uploads the chosen file; lists its bad lines, or selects it for training. */
async function newJobUpload(upload, result, train, choices, signal) {
  const file = upload.input.files[0];
  setErr(upload, '');
  if (!file) return;
  fill(result, el('p', {className: 'muted', text: `Uploading ${file.name} (${fmtBytes(file.size)})…`}));
  const fd = new FormData();
  fd.append('purpose', 'fine-tune');
  fd.append('file', file, file.name);
  let f;
  try {
    f = await api('POST', '/v1/files', {body: fd, signal});
  } catch (e) {
    if (e.name === 'AbortError') return;
    fill(result);
    setErr(upload, e.message);
    return;
  }
  if (f.status !== 'processed') {
    const lines = (f.status_details || 'invalid file').split('\n').filter(Boolean);
    fill(result, el('div', {className: 'alert', role: 'alert', id: 'upload-errors'},
      el('strong', {text: `${f.filename} is not valid training data (${lines.length} problem${lines.length === 1 ? '' : 's'}):`}),
      el('ul', {className: 'errors'}, lines.map((l) => el('li', {text: l})))));
    setErr(upload, 'Fix the lines listed below and upload again.');
    return;
  }
  fill(result, el('p', {className: 'ok', id: 'upload-ok'},
    `✓ ${f.filename}: ${f.lines} lines, ${fmtBytes(f.bytes)}, sha256 `, el('span', {className: 'mono small', text: f.sha256})));
  await choices(train.input.value ? null : f.id);
  if (train.input.value !== f.id && !train.input.value) train.input.value = f.id;
}

/* Checks every field (focus goes to the first at fault; nothing is sent),
 * then creates the job and opens its page; a 400 is shown at the field it
 * names. */
async function newJobSubmit(form) {
  const {model, method, train, valid, suffix, hps, formErr, submit} = form;
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
    if (f.h.bool) { setErr(f, ''); if (f.input.checked) hpOut[f.h.k] = true; continue; }
    const [v, err] = checkField(f.h, f.limit(), f.input.value);
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
    const f = newJobFieldFor(form, e.param);
    if (f) { setErr(f, e.message); f.input.focus(); } else fill(formErr, errorBox(e));
  } finally {
    submit.disabled = false;
  }
}

/* The field an API error's param names ("method.lora.hyperparameters.rank"). */
function newJobFieldFor(form, param) {
  if (!param) return null;
  const last = param.split('.').pop();
  const {model, train, valid, suffix, method, hps} = form;
  return {model, training_file: train, validation_file: valid, suffix, method}[param] ||
    hps.find((f) => f.h.k === last) || (last === 'learning_rate_multiplier' ? hps.find((f) => f.h.k === 'learning_rate') : null);
}
