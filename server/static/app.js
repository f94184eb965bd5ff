/* deltatune dashboard: plain JavaScript, no dependencies, no build step.
 * app.js (loaded last) is the router: hash routes #/signin, #/jobs
 * (jobs.js), #/jobs/<id> (job.js, live.js), #/new (new.js), #/models
 * (models.js), #/playground (playground.js); the sign-in page; the start. Helpers are in util.js, the API
 * in api.js, charts in chart.js. */
'use strict';

const main = document.getElementById('main');
let page = null; /* {cleanups, cleanup()} of the page on screen */
let signInMessage = ''; /* shown once on the next sign-in page */
let firstRoute = true; /* the page's first load is routing */

/* ---- routing ------------------------------------------------------------------ */

/* Forgets the key and shows the sign-in page with msg. */
function signOut(msg) {
  sessionStorage.removeItem(KEY);
  signInMessage = msg || '';
  if (location.hash !== '#/signin') location.hash = '#/signin';
  else route();
}

/* "#/jobs/ID?status=S" -> {parts: ['jobs', 'ID'], query}. */
function parseHash() {
  const h = location.hash.replace(/^#/, '') || '/jobs';
  const [path, query] = h.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return {parts, query: new URLSearchParams(query || '')};
}

/* Ends the page on screen (its cleanups: aborts, timers) and starts an empty
 * one: the title, the current nav link. Pages push their cleanups. */
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
  if (r === 'playground') return renderPlayground(query);
  setPage('Not found');
  main.append(el('h1', {text: 'Not found'}), el('p', {}, 'No such page. ', el('a', {href: '#/jobs', text: 'Jobs'})));
}

/* After a navigation, focus goes to the new page's content (not on the
 * first load, so that Tab starts at the skip link). */
function focusMain() { if (!firstRoute) main.focus({preventScroll: true}); }

/* ---- sign in ---------------------------------------------------------------- */

/* The key is tried on the API before it is kept; next: the page to open. */

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

/* ---- start ---------------------------------------------------------------------- */

document.getElementById('signout').addEventListener('click', () => signOut('Signed out.'));
window.addEventListener('hashchange', route);
route();
firstRoute = false;
