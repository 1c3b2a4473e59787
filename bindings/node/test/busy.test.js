'use strict';
// Uploads run on the core's thread: a CPU-bound event loop neither delays nor drops them.
// setLabels' labels survive every upload.

const test = require('node:test');
const assert = require('node:assert/strict');
const { cpuProfiles, total, cpuWithin, has, runProfiled } = require('./helpers');

test('profiles arrive while the event loop is busy, and setLabels outlives the uploads', async (t) => {
  const { res, receiver: r } = await runProfiled(['test/fixtures/busy.js']);
  const out = JSON.parse(res.stdout);
  assert.deepEqual(out.labels, { tenant: 'a' });
  assert.ok(out.windowsAfter >= 3, `windows after the loop: ${out.windowsAfter}`);
  assert.ok(out.uploadsDuring >= 2, `uploads the core sent during the loop: ${out.uploadsDuring}`);

  const cpu = cpuProfiles(r);
  const busy = has(/^\.\/test\/fixtures\/busy\.js:busyLoop:\d+$/);
  // Windows that closed while the loop ran, by the clock of the window's own end.
  const during = cpu.filter((p) => (p.time_nanos + p.duration_nanos) / 1e6 <= out.loopEnd);
  t.diagnostic(`loop ${out.loopEnd - out.loopStart} ms; windows closed during it: ${during.length}, after: ${cpu.length - during.length}`);
  assert.ok(during.length >= 2, `windows closed during the loop: ${during.length}`);
  assert.ok(during.every((p) => total([p], 'cpu', busy) > 0), 'a window closed during the loop misses busyLoop');
  // The loop's whole CPU time is in the profiles (nothing dropped), as its thread's clock has it.
  cpuWithin('busyLoop', total(cpu, 'cpu', busy), out.loopCpuNs, 0.9, 1.1);

  // Every sample of the labelled work carries the label, in every window (the two last full
  // windows hold it at least).
  const tenant = has(/:tenantWork:\d+$/);
  const withWork = cpu.filter((p) => total([p], 'cpu', tenant) > 0);
  assert.ok(withWork.length >= 2, `profiles with tenantWork: ${withWork.length}`);
  for (const fn of [busy, tenant]) {
    const all = total(cpu, 'cpu', fn);
    assert.equal(total(cpu, 'cpu', (s) => fn(s) && s.labels.tenant === 'a'), all, 'a sample lost tenant=a');
  }
});
