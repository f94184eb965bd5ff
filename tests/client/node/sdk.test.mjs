// The official OpenAI Node SDK (npm `openai`, pinned in package-lock.json)
// against a real deltatune stack, unchanged but for baseURL and apiKey.
// tests/client/test_node_sdk.py starts the stack and runs this file with
// `node --test`, passing DT_URL, DT_KEY, DT_OTHER_KEY and DT_MODEL.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import OpenAI, { toFile } from 'openai';

const { DT_URL, DT_KEY, DT_OTHER_KEY, DT_MODEL, DT_TRAIN } = process.env;
if (!DT_URL || !DT_KEY || !DT_OTHER_KEY || !DT_MODEL || !DT_TRAIN) {
  throw new Error('run through tests/client/test_node_sdk.py (DT_URL, DT_KEY, DT_OTHER_KEY, DT_MODEL, DT_TRAIN)');
}
// The SDK's defaults (2 retries on 408/409/429/5xx), as a user has them.
const opts = { baseURL: `${DT_URL}/v1` };
const client = new OpenAI({ ...opts, apiKey: DT_KEY });
const other = new OpenAI({ ...opts, apiKey: DT_OTHER_KEY });
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
const SMALL = { n_epochs: 1, batch_size: 8 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function wait(id, timeoutMs = 120_000) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const job = await client.fineTuning.jobs.retrieve(id);
    if (TERMINAL.has(job.status)) return job;
    if (Date.now() > end) throw new Error(`job ${id} still ${job.status}`);
    await sleep(300);
  }
}

async function rejects(promise, cls) {
  try {
    await promise;
  } catch (e) {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${e?.constructor?.name}: ${e?.message}`);
    return e;
  }
  assert.fail(`expected ${cls.name}, got success`);
}

let file, job, done;

before(async () => {
  file = await client.files.create({ file: await toFile(Buffer.from(DT_TRAIN), 'train.jsonl'), purpose: 'fine-tune' });
  job = await client.fineTuning.jobs.create({
    model: DT_MODEL, training_file: file.id, suffix: 'sdk-node', metadata: { suite: 'node-sdk' },
    method: { type: 'delta_lora', delta_lora: { hyperparameters: { rank: 4, alpha: 8, lambda: 0.5, ...SMALL } } },
  });
  done = await wait(job.id);
});

test('files.create, retrieve, content, list', async () => {
  assert.match(file.id, /^file-/);
  assert.equal(file.object, 'file');
  assert.equal(file.purpose, 'fine-tune');
  assert.equal(file.filename, 'train.jsonl');
  assert.equal(file.bytes, Buffer.byteLength(DT_TRAIN));
  const got = await client.files.retrieve(file.id);
  assert.equal(got.id, file.id);
  const content = await client.files.content(file.id);
  assert.equal(await content.text(), DT_TRAIN);
  const ids = [];
  for await (const f of client.files.list()) ids.push(f.id);
  assert.ok(ids.includes(file.id));
});

test('delta_lora job through method succeeds', () => {
  assert.match(job.id, /^ftjob-/);
  assert.equal(job.object, 'fine_tuning.job');
  assert.equal(job.model, DT_MODEL);
  assert.equal(job.method.type, 'delta_lora');
  assert.equal(job.method.delta_lora.hyperparameters.rank, 4);
  assert.deepEqual(job.metadata, { suite: 'node-sdk' });
  assert.equal(done.status, 'succeeded', JSON.stringify(done.error));
  assert.ok(done.fine_tuned_model.startsWith(`ft:${DT_MODEL}:`), done.fine_tuned_model);
  assert.ok(done.fine_tuned_model.includes('sdk-node'));
  assert.ok(done.finished_at >= done.created_at);
  assert.ok(done.trained_tokens > 0);
  assert.equal(done.hyperparameters.n_epochs, 1);
  assert.equal(done.hyperparameters.batch_size, 8);
  assert.equal(done.progress.step, done.progress.total_steps);
});

test('supervised method and legacy hyperparameters', async () => {
  const sup = await client.fineTuning.jobs.create({
    model: DT_MODEL, training_file: file.id,
    method: { type: 'supervised', supervised: { hyperparameters: { ...SMALL, learning_rate_multiplier: 2 } } },
  });
  const legacy = await client.fineTuning.jobs.create({
    model: DT_MODEL, training_file: file.id, hyperparameters: { ...SMALL, learning_rate_multiplier: 'auto' },
  });
  assert.equal(sup.hyperparameters.learning_rate_multiplier, 2);
  for (const j of [sup, legacy]) {
    assert.equal(j.hyperparameters.n_epochs, 1);
    const d = await wait(j.id);
    assert.equal(d.status, 'succeeded', JSON.stringify(d.error));
    assert.ok(d.fine_tuned_model);
  }
});

test('retrieve, list with auto-pagination', async () => {
  const ids = new Set([job.id]);
  for (let i = 0; i < 3; i++) {
    const j = await client.fineTuning.jobs.create({
      model: DT_MODEL, training_file: file.id, hyperparameters: SMALL, metadata: { suite: 'node-sdk-list' },
    });
    ids.add(j.id);
  }
  assert.equal((await client.fineTuning.jobs.retrieve(job.id)).id, job.id);
  const page = await client.fineTuning.jobs.list({ limit: 2 });
  assert.equal(page.data.length, 2);
  assert.equal(page.has_more, true);
  assert.ok(page.hasNextPage());
  const seen = [];
  for await (const j of client.fineTuning.jobs.list({ limit: 2 })) seen.push(j);
  assert.equal(new Set(seen.map((j) => j.id)).size, seen.length, 'a job came twice across pages');
  for (const id of ids) assert.ok(seen.some((j) => j.id === id), id);
  const created = seen.map((j) => j.created_at);
  assert.deepEqual(created, [...created].sort((a, b) => b - a));
  const tagged = [];
  for await (const j of client.fineTuning.jobs.list({ metadata: { suite: 'node-sdk-list' } })) tagged.push(j.id);
  assert.deepEqual(new Set(tagged), new Set([...ids].filter((id) => id !== job.id)));
  for await (const j of other.fineTuning.jobs.list()) assert.ok(!ids.has(j.id));
  for (const id of ids) {
    if (id !== job.id) {
      await client.fineTuning.jobs.cancel(id).catch((e) => { if (!(e instanceof OpenAI.ConflictError)) throw e; });
    }
  }
});

test('cancel', async () => {
  const j = await client.fineTuning.jobs.create({
    model: DT_MODEL, training_file: file.id,
    method: { type: 'lora', lora: { hyperparameters: { n_epochs: 100, batch_size: 1 } } },
  });
  const c = await client.fineTuning.jobs.cancel(j.id);
  assert.equal(c.id, j.id);
  assert.equal((await wait(j.id)).status, 'cancelled');
  const e = await rejects(client.fineTuning.jobs.cancel(j.id), OpenAI.ConflictError);
  assert.equal(e.status, 409);
  assert.equal(e.code, 'invalid_state');
  assert.equal(e.headers.get('x-should-retry'), 'false'); // not retried twice first
});

test('pause and resume', async () => {
  const j = await client.fineTuning.jobs.create({
    model: DT_MODEL, training_file: file.id,
    method: { type: 'lora', lora: { hyperparameters: { n_epochs: 100, batch_size: 1 } } },
  });
  assert.equal((await client.fineTuning.jobs.pause(j.id)).id, j.id);
  const end = Date.now() + 120_000;
  let st;
  while ((st = (await client.fineTuning.jobs.retrieve(j.id)).status) !== 'paused' && !TERMINAL.has(st)) {
    assert.ok(Date.now() < end, `still ${st}`);
    await sleep(300);
  }
  assert.equal(st, 'paused');
  const r = await client.fineTuning.jobs.resume(j.id);
  assert.ok(['queued', 'running'].includes(r.status), r.status);
  await client.fineTuning.jobs.cancel(j.id);
  assert.equal((await wait(j.id)).status, 'cancelled');
});

test('Idempotency-Key replays', async () => {
  const headers = { 'Idempotency-Key': `client-node-${Date.now()}-${Math.random()}` };
  const body = { model: DT_MODEL, training_file: file.id, hyperparameters: SMALL };
  const a = await client.fineTuning.jobs.create(body, { headers });
  const { data: b, response } = await client.fineTuning.jobs.create(body, { headers }).withResponse();
  assert.equal(response.headers.get('idempotent-replayed'), 'true');
  assert.equal(b.id, a.id);
  await rejects(client.fineTuning.jobs.create({ ...body, hyperparameters: { n_epochs: 2 } }, { headers }),
    OpenAI.UnprocessableEntityError);
  await client.fineTuning.jobs.cancel(a.id).catch((e) => { if (!(e instanceof OpenAI.ConflictError)) throw e; });
});

test('listEvents', async () => {
  const events = await client.fineTuning.jobs.listEvents(job.id, { limit: 100 });
  assert.ok(events.data.length > 0);
  for (const e of events.data) {
    assert.equal(e.object, 'fine_tuning.job.event');
    assert.ok(['info', 'warn', 'error'].includes(e.level));
    assert.equal(typeof e.message, 'string');
  }
  assert.ok(events.data.some((e) => e.type === 'metrics'));
  const paged = [];
  for await (const e of client.fineTuning.jobs.listEvents(job.id, { limit: 2 })) paged.push(e.id);
  assert.deepEqual(paged, events.data.map((e) => e.id));
});

test('checkpoints.list', async () => {
  const cps = [];
  for await (const c of client.fineTuning.jobs.checkpoints.list(job.id)) cps.push(c);
  assert.ok(cps.length > 0);
  for (const c of cps) {
    assert.equal(c.object, 'fine_tuning.job.checkpoint');
    assert.equal(c.fine_tuning_job_id, job.id);
    assert.ok(c.step_number > 0);
    assert.ok(c.fine_tuned_model_checkpoint);
  }
  const steps = cps.map((c) => c.step_number);
  assert.deepEqual(steps, [...steps].sort((a, b) => b - a));
});

test('models.list and models.retrieve', async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.ok(ids.includes(DT_MODEL));
  assert.ok(ids.includes(done.fine_tuned_model));
  const base = await client.models.retrieve(DT_MODEL);
  assert.equal(base.id, DT_MODEL);
  assert.equal(base.object, 'model');
  assert.equal(typeof base.created, 'number');
  const ft = await client.models.retrieve(done.fine_tuned_model);
  assert.equal(ft.id, done.fine_tuned_model);
  assert.ok(ft.owned_by);
  await rejects(client.models.retrieve('no-such-model'), OpenAI.NotFoundError);
  await rejects(other.models.retrieve(done.fine_tuned_model), OpenAI.NotFoundError);
});

test('chat.completions.create and completions.create, plain and streamed', async () => {
  const messages = [{ role: 'user', content: 'name : Place 1 | food : French' }];
  for (const model of [DT_MODEL, done.fine_tuned_model]) {
    const c = await client.chat.completions.create({ model, messages, temperature: 0, max_tokens: 8 });
    assert.equal(c.object, 'chat.completion');
    assert.equal(c.model, model);
    assert.equal(c.choices[0].message.role, 'assistant');
    assert.ok(['stop', 'length'].includes(c.choices[0].finish_reason));
    const stream = await client.chat.completions.create({
      model, messages, temperature: 0, max_tokens: 8, stream: true, stream_options: { include_usage: true },
    });
    let text = '', usage = null;
    for await (const chunk of stream) {
      assert.equal(chunk.object, 'chat.completion.chunk');
      if (chunk.choices.length) text += chunk.choices[0].delta.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    assert.equal(text, c.choices[0].message.content);
    assert.deepEqual(usage, c.usage);

    const p = await client.completions.create({ model, prompt: 'name : Place', temperature: 0, max_tokens: 6 });
    assert.equal(p.object, 'text_completion');
    let ptext = '';
    for await (const chunk of await client.completions.create({
      model, prompt: 'name : Place', temperature: 0, max_tokens: 6, stream: true,
    })) ptext += chunk.choices[0].text;
    assert.equal(ptext, p.choices[0].text);
  }
  const br = await rejects(client.chat.completions.create({ model: DT_MODEL, messages, n: 2 }),
    OpenAI.BadRequestError);
  assert.equal(br.param, 'n');
  await rejects(other.chat.completions.create({ model: done.fine_tuned_model, messages }), OpenAI.NotFoundError);
});

test('typed errors', async () => {
  const nf = await rejects(other.fineTuning.jobs.retrieve(job.id), OpenAI.NotFoundError);
  assert.equal(nf.status, 404);
  await rejects(other.fineTuning.jobs.cancel(job.id), OpenAI.NotFoundError);
  const bad = new OpenAI({ ...opts, apiKey: 'dt-nope-nope' });
  const au = await rejects(bad.models.list(), OpenAI.AuthenticationError);
  assert.equal(au.status, 401);
  const br = await rejects(client.fineTuning.jobs.create({
    model: DT_MODEL, training_file: file.id,
    method: { type: 'delta_lora', delta_lora: { hyperparameters: { rank: 0 } } },
  }), OpenAI.BadRequestError);
  assert.equal(br.status, 400);
  assert.equal(br.param, 'method.delta_lora.hyperparameters.rank');
  const br2 = await rejects(client.fineTuning.jobs.create({
    model: DT_MODEL, training_file: file.id, hyperparameters: { n_epochs: 0 },
  }), OpenAI.BadRequestError);
  assert.equal(br2.param, 'hyperparameters.n_epochs');
});

test('merged model files download through the REST API', async () => {
  const model = done.fine_tuned_model;
  const list = await client.get(`/models/${encodeURIComponent(model)}/files`);
  assert.equal(list.object, 'list');
  const names = new Map(list.data.map((f) => [f.name, f]));
  assert.ok(names.has('config.json'));
  assert.ok(names.has('model.safetensors'));
  for (const [name, meta] of names) {
    const res = await client.get(`/models/${encodeURIComponent(model)}/files/${encodeURIComponent(name)}`,
      { __binaryResponse: true });
    const body = Buffer.from(await res.arrayBuffer());
    assert.equal(body.length, meta.bytes, name);
    assert.equal(createHash('sha256').update(body).digest('hex'), meta.sha256, name);
    if (name === 'config.json') assert.equal(JSON.parse(body).model_type, 'gpt2');
  }
});
