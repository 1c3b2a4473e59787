'use strict';
// Worker threads started after start() are sampled with named frames, though they never load
// the package themselves.

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { run, cpuProfiles, total, cpuWithin, has, pkg, runProfiled } = require('./helpers');

test('workers that never load the package get named JavaScript frames', async () => {
  const { res, receiver: r } = await runProfiled(['test/fixtures/workers.js']);
  const burnt = JSON.parse(res.stdout);
  const cpu = cpuProfiles(r);
  for (const [i, fn] of ['workerAlpha', 'workerBeta'].entries()) {
    const ns = total(cpu, 'cpu', has(new RegExp(`^\\./test/fixtures/plain-worker\\.js:${fn}:\\d+$`)));
    // About 300 ms of the worker's own CPU time in the function; /proc counts it in 10 ms ticks,
    // one more period of slack either way.
    cpuWithin(fn, ns, burnt[i], 0.9, 1.1, 1.5e7);
  }
});

test('the package leaves node:worker_threads unloaded and wraps Worker however the app gets it', async () => {
  const ask = async (args, env = {}) => {
    const res = await run(args, env);
    assert.equal(res.code, 0, res.stderr);
    return JSON.parse(res.stdout);
  };
  const fixture = 'test/fixtures/worker-wrap.js';
  assert.deepEqual(await ask([fixture, 'require']), { loadedByPackage: false, wrapped: true });
  assert.deepEqual(await ask([fixture, 'getBuiltinModule']), { loadedByPackage: false, wrapped: true });
  assert.deepEqual(await ask([fixture, 'before']), { loadedByPackage: null, wrapped: true });
  // ESM: static imports are linked before the package runs.
  assert.deepEqual(await ask(['test/fixtures/worker-wrap.mjs']), { api: 'function', wrapped: true });
  // --require register runs before an ESM app links its imports: it wraps at once.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pyroscope-wrap-'));
  try {
    const env = { PYROSCOPE_APPLICATION_NAME: 'wrap', PYROSCOPE_EXPORT_DIR: dir };
    const register = path.join(pkg, 'register.js');
    assert.deepEqual(await ask(['--require', register, 'test/fixtures/worker-wrap-plain.mjs'], env), { wrapped: true });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a Worker class taken before the package was loaded: unnamed frames, and one warning that says why', async () => {
  const named = has(/:workerAlpha:\d+$/);
  const warning = /Worker class taken from node:worker_threads before pyroscope-profiler was loaded/;
  const before = await runProfiled(['test/fixtures/worker-unwrapped.js'], { ORDER: 'before' });
  const warned = JSON.parse(before.res.stdout);
  assert.equal(warned.filter((m) => warning.test(m)).length, 1, JSON.stringify(warned));
  assert.equal(total(cpuProfiles(before.receiver), 'cpu', named), 0, 'the early class named its worker');
  const after = await runProfiled(['test/fixtures/worker-unwrapped.js'], { ORDER: 'after' });
  assert.deepEqual(JSON.parse(after.res.stdout).filter((m) => warning.test(m)), []);
  assert.ok(total(cpuProfiles(after.receiver), 'cpu', named) > 0, 'the wrapped class did not name its worker');
});
