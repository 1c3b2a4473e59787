'use strict';
// Fallback mode (an addon built without V8's JIT code names): JavaScript frames still named,
// from V8's sampling profiler. Forced with PYROSCOPE_NODE_FALLBACK=1 on the regular build; with
// PYROSCOPE_NODE_TEST_NO_SHIM=1, run against an addon built without its C++ part
// (scripts/node-test.sh builds one), which must choose it by itself.

const test = require('node:test');
const assert = require('node:assert/strict');
const { startReceiver, run, cpuProfiles, total, cpuWithin, has } = require('./helpers');

const noShimBuild = process.env.PYROSCOPE_NODE_TEST_NO_SHIM === '1';

test(`fallback mode still names JavaScript frames in the CPU profile${noShimBuild ? ' (a build without the C++ part)' : ''}`, async () => {
  if (noShimBuild) assert.equal(require('../lib/native').jitNamesAvailable(), false, 'this addon has its C++ part');
  const r = await startReceiver();
  const env = noShimBuild ? {} : { PYROSCOPE_NODE_FALLBACK: '1' };
  const res = await run(['test/fixtures/accuracy.js'], { PYROSCOPE_SERVER_ADDRESS: r.url, ...env });
  await r.close();
  assert.equal(res.code, 0, res.stderr);
  const truth = JSON.parse(res.stdout);
  const cpu = cpuProfiles(r);
  for (const fn of ['alphaWork', 'betaWork', 'gammaWork']) {
    const got = total(cpu, 'cpu', has(new RegExp(`^\\./test/fixtures/accuracy\\.js:${fn}:\\d+$`)));
    // V8 samples by the wall clock (a tick that comes while the thread waits for a core is
    // taken when it runs again, several ticks as one); each batch is weighed to the thread's
    // CPU time, so a busy machine does not inflate the total, but within a batch a function
    // that waited for a core more than the others gets more than its CPU share and they less
    // (gammaWork got 0.67 of its CPU time once at load average 4.5). Never counted twice with
    // the core's own samples: at most 2x, and each function's share is there.
    cpuWithin(fn, got, truth[fn], 0.5, 2);
  }
  const stack = cpu.flatMap((p) => p.samples).find(has(/:betaWork:/));
  const names = stack.frames.map((f) => f.function);
  assert.ok(names.findIndex((n) => /:burnFor:/.test(n)) < names.findIndex((n) => /:betaWork:/.test(n)), names.join(' < '));
});
