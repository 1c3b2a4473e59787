'use strict';
// Where labels hold in each mode (asyncLabels), as the signal handler reads them: a fixture
// runs a dozen labelled requests and an unlabelled task concurrently, through promise
// continuations and callbacks, and reports the id a sample would carry at each place
// (test/fixtures/label-modes.js).

const test = require('node:test');
const assert = require('node:assert/strict');
const { startReceiver, run, cpuProfiles, total, has } = require('./helpers');

async function checksIn(asyncLabels) {
  const env = { PYROSCOPE_EXPORT_DIR: require('node:os').tmpdir() };
  if (asyncLabels !== undefined) env.PYROSCOPE_ASYNC_LABELS = asyncLabels;
  const res = await run(['test/fixtures/label-modes.js'], env);
  assert.equal(res.code, 0, res.stderr);
  const out = JSON.parse(res.stdout);
  assert.equal(out.distinct, 12, 'each request has a set of its own');
  assert.equal(out.workerMode, out.mode, 'a worker thread follows PYROSCOPE_ASYNC_LABELS');
  assert.ok(out.nestedDiffer, 'a nested wrapWithLabels has a set of its own');
  assert.ok(out.checks.length > 300, `${out.checks.length} checks`);
  return out;
}

function wrongChecks(checks, want) {
  return checks.filter((c) => c.got !== want(c)).map((c) => `${c.where}: ${c.got} instead of ${want(c)}`);
}

test('by default, on Node 20, labels follow promises through V8 and callbacks run unlabelled', async () => {
  const out = await checksIn(undefined);
  assert.equal(out.mode, 'promises');
  const want = (c) => (['sync', 'continuation', 'global'].includes(c.kind) ? c.own : 0);
  assert.deepEqual(wrongChecks(out.checks, want), []);
  // getLabels() reads the same place.
  for (const c of out.checks) {
    if (c.got !== 0) assert.notDeepEqual(c.labels, {}, `${c.where}: getLabels() is empty`);
    if (c.where.startsWith('request') && c.kind === 'continuation') {
      assert.equal(c.labels.request, `q${c.where.split(' ')[1]}`, c.where);
    }
  }
});

test("asyncLabels 'all': labels follow promises and callbacks (AsyncLocalStorage)", async () => {
  const out = await checksIn('all');
  assert.equal(out.mode, 'all');
  const want = (c) => (['outside', 'global'].includes(c.kind) ? 0 : c.own);
  assert.deepEqual(wrongChecks(out.checks, want), []);
});

test('asyncLabels false: labels hold for the synchronous call only, and are never carried to a continuation', async () => {
  const out = await checksIn('false');
  assert.equal(out.mode, 'sync');
  const own = new Set(out.checks.filter((c) => c.kind === 'sync').map((c) => c.own));
  own.delete(out.set);
  assert.deepEqual(wrongChecks(out.checks.filter((c) => ['sync', 'global'].includes(c.kind)), (c) => c.own), []);
  // setLabels applies everywhere in this mode (as in 0.6), so a continuation reads 0 or that set.
  const carried = out.checks.filter((c) => c.kind !== 'sync' && own.has(c.got));
  assert.deepEqual(carried.map((c) => c.where), []);
  assert.ok(out.checks.some((c) => c.kind === 'continuation' && c.got === 0));
});

test('labels carried by V8 survive a moving collector, at 1 kHz, on the main thread and in workers', async () => {
  const r = await startReceiver();
  const res = await run(['--stress-compaction', '--expose-gc', 'test/fixtures/cped-gc.js'], { PYROSCOPE_SERVER_ADDRESS: r.url }, {
    timeoutMs: 120000,
  });
  await r.close();
  assert.equal(res.signal, null, `killed by ${res.signal}: ${res.stderr}`);
  assert.equal(res.code, 0, res.stderr);
  const out = JSON.parse(res.stdout);
  assert.deepEqual(out.modes, ['promises', 'promises', 'promises']);
  assert.equal(out.checked, 3 * 4 * 40);
  assert.deepEqual(out.wrong, []);
  // The pushed profiles: samples of each task's burn function carry its route. Under
  // --stress-compaction V8 moves code at nearly every collection; the collector names each
  // sample by the code at its addresses when it was taken, but a sample taken during a
  // collection, after code moved and before V8 updated the stack's return addresses, can
  // still get a frame misnamed (measured: at most 0.8% here). The exact check of the labels
  // is the fixture's own, above, which reads what the handler reads.
  const cpu = cpuProfiles(r);
  let burnt = 0;
  let misnamed = 0;
  for (const thread of ['main', 'w1', 'w2']) {
    for (let k = 0; k < 4; k++) {
      const mine = has(new RegExp(`:burn_${thread}_${k}:\\d+$`));
      const all = total(cpu, 'samples', mine);
      assert.ok(all > 0, `no samples in burn_${thread}_${k}`);
      const labelled = total(cpu, 'samples', (s) => mine(s) && s.labels.route === `${thread}-${k}`);
      assert.ok(labelled >= 0.8 * all, `burn_${thread}_${k}: ${all - labelled} of ${all} samples without their route`);
      burnt += all;
      misnamed += all - labelled;
    }
  }
  assert.ok(burnt >= 300, `samples in the burn functions: ${burnt}`);
  assert.ok(misnamed <= 0.02 * burnt, `${misnamed} of ${burnt} samples in a burn function without its route`);
});

test('switching the mode at init leaves nothing set in the old mode in force', async () => {
  for (const [from, to] of [['false', true], ['all', true], ['true', false], ['true', 'all']]) {
    const code = `
      const pyroscope = require('.');
      const native = require('./lib/native');
      pyroscope.setLabels({ region: 'old' });
      pyroscope.wrapWithLabels({ scoped: 'old' }, async () => {
        await null;
        pyroscope.init({ appName: 'mode-switch', asyncLabels: ${JSON.stringify(to)} });
      }).then(() => setTimeout(() => console.log(JSON.stringify([native.sampledLabelId(), pyroscope.getLabels()])), 1));
    `;
    const res = await run(['-e', code], { PYROSCOPE_ASYNC_LABELS: from, PYROSCOPE_EXPORT_DIR: require('node:os').tmpdir() });
    assert.equal(res.code, 0, res.stderr);
    assert.deepEqual(JSON.parse(res.stdout), [0, {}], `from ${from} to ${to}`);
  }
});
