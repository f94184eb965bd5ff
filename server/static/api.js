/* api.js: the dashboard's only way to the server. The API key lives in
 * sessionStorage (this tab only) and goes in the Authorization header of
 * every call; a refused key signs the tab out. Downloads are fetched with
 * the key and saved from a Blob. The contract (GET /v1/openapi.json, public)
 * is read once per page load. */
'use strict';

const KEY = 'deltatune.key';

/* An API error reply ({"error": {message, param, code}}) or, with status 0,
 * a server that did not answer. */
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

/* Calls the API; resolves to the reply's JSON (null when empty), rejects
 * with an ApiError (or the AbortError of opts.signal). opts: json (a body
 * sent as JSON), body, headers, signal, key (sign-in: try this key, and do
 * not sign out when it is refused). Every POST carries an Idempotency-Key. */
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

/* Fetches path with the key and saves it under name (a Blob download);
 * button (optional) is disabled meanwhile. */
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

/* The served contract (GET /v1/openapi.json) as a Promise of its JSON,
 * fetched once per page load; after a failure the next call tries again. */
let contract = null;
function apiContract() {
  if (!contract) {
    contract = fetch('/v1/openapi.json', {cache: 'no-cache'}).then((resp) => {
      if (!resp.ok) throw new ApiError(resp.status, null);
      return resp.json();
    });
    contract.catch(() => { contract = null; });
  }
  return contract;
}

/* The schema at a local "$ref" (#/components/...) of doc, followed until it
 * is not a reference; null when it leads nowhere. */
function specDeref(doc, schema) {
  for (let i = 0; schema && typeof schema.$ref === 'string' && i < 32; i++) {
    if (!schema.$ref.startsWith('#/')) return null;
    schema = schema.$ref.slice(2).split('/')
      .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
      .reduce((o, p) => (o && typeof o === 'object' ? o[p] : undefined), doc);
  }
  return schema && typeof schema === 'object' ? schema : null;
}
