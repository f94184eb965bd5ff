/* jobs.js: the jobs list (#/jobs, #/jobs?status=S&after=ID): one page of 20
 * jobs, a status filter, paging by cursor, refreshed while any job on it is
 * still moving. */
'use strict';

const JOBS_PER_PAGE = 20;

/* One page of jobs matching status ('' = all) after the cursor. The API
 * has no status filter, so filtered pages read up to 10 x 100 jobs. */
async function loadJobs(after, status, signal) {
  const out = [];
  let cursor = after, more = true, reads = 0;
  while (out.length < JOBS_PER_PAGE && more && reads < 10) {
    const q = new URLSearchParams({limit: String(status ? 100 : JOBS_PER_PAGE)});
    if (cursor) q.set('after', cursor);
    const r = await api('GET', `/v1/fine_tuning/jobs?${q}`, {signal});
    reads++;
    more = r.has_more;
    for (const j of r.data) {
      cursor = j.id;
      if (status && j.status !== status) continue;
      out.push(j);
      if (out.length === JOBS_PER_PAGE) { more = more || j !== r.data[r.data.length - 1]; break; }
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
