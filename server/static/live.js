/* live.js: keeps a job's page (job.js) up to date while the job can still
 * change: the Server-Sent Events stream read with fetch (EventSource cannot
 * send the Authorization header), resumed with Last-Event-ID; polling every
 * 2 s when the stream is unavailable (refused, cut, a proxy that buffers),
 * every 5 s while the server does not answer. #live-mode says which. */
'use strict';

async function jobStartLive(v) {
  v.streaming = true;
  try {
    const ended = await jobStream(v);
    v.streaming = false;
    v.live.textContent = '';
    await jobRefresh(v);
    jobRefreshCheckpoints(v);
    if (!ended && !TERMINAL.includes(v.job.status)) throw new Error('stream closed');
  } catch (e) {
    v.streaming = false;
    if (e.name === 'AbortError') return;
    try { await jobLoadAllEvents(v); } catch (e2) { if (e2.name === 'AbortError') return; }
    jobPoll(v).catch((e2) => jobPollFailed(v, e2));
  }
}

/* Reads the stream until it closes; true when it ended with the "end"
 * event (the job finished), false when it was cut. */
async function jobStream(v) {
  const headers = {Authorization: `Bearer ${key()}`, Accept: 'text/event-stream'};
  if (v.lastSeq) headers['Last-Event-ID'] = `ftevent-${v.lastSeq}`;
  const resp = await fetch(`${v.path}/events?stream=true`, {headers, signal: v.ctl.signal, cache: 'no-store'});
  if (!resp.ok || !resp.body) throw new Error(`stream HTTP ${resp.status}`);
  v.live.textContent = '● live';
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
      const ev = sseBlock(buf.slice(0, cut));
      buf = buf.slice(cut + 2);
      if (!ev.data) continue;
      if (ev.type === 'end') { ended = true; continue; }
      try { batch.push(JSON.parse(ev.data)); } catch (e) { /* skip a malformed event */ }
    }
    if (batch.length) jobAddEvents(v, batch);
  }
  return ended;
}

/* One Server-Sent Events block -> {type, data} (comments ignored). */
function sseBlock(block) {
  let type = 'message', data = '';
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) type = line.slice(6).trim();
    else if (line.startsWith('data:')) data += line.slice(5).replace(/^ /, '');
  }
  return {type, data};
}

async function jobPoll(v) {
  v.live.textContent = '○ polling';
  const r = await api('GET', `${v.path}/events?limit=100`, {signal: v.ctl.signal});
  jobAddEvents(v, r.data);
  await jobRefresh(v);
  if (!TERMINAL.includes(v.job.status)) v.timers.push(setTimeout(() => jobPoll(v).catch((e) => jobPollFailed(v, e)), 2000));
  else v.live.textContent = '';
}

function jobPollFailed(v, e) {
  if (e.name === 'AbortError') return;
  v.live.textContent = '○ offline, retrying';
  v.timers.push(setTimeout(() => jobPoll(v).catch((e2) => jobPollFailed(v, e2)), 5000));
}

/* Every event so far (up to 20 pages of 1000), oldest first. */
async function jobLoadAllEvents(v) {
  let after = '';
  for (let i = 0; i < 20; i++) {
    const r = await api('GET', `${v.path}/events?limit=1000${after ? `&after=${after}` : ''}`, {signal: v.ctl.signal});
    jobAddEvents(v, r.data);
    if (!r.has_more || !r.data.length) break;
    after = r.data[r.data.length - 1].id;
  }
}
