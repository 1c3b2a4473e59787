'use strict';
// The cost per `await` of labels that follow async work: one million awaits inside
// wrapWithLabels, with async propagation on (the default: along promises), 'all' (promises and
// callbacks, AsyncLocalStorage), off, and with no profiler loaded.
// Usage: node await-cost.js on|all|off|none  -> prints ns per await (the process's CPU time).
// `make bench` runs it (benches/node/bench.py) and reports the medians in BENCHMARKS.md.
const mode = process.argv[2] || 'on';
const N = 1_000_000;
let pyroscope = null;
if (mode !== 'none') {
  process.env.PYROSCOPE_ASYNC_LABELS = { on: 'true', all: 'all', off: 'false' }[mode];
  pyroscope = require('../../bindings/node');
  // Labels only: no agent, so the figure is the labels' own cost.
  pyroscope.init({ appName: 'await-cost' });
}
const cpu = () => process.cpuUsage().user + process.cpuUsage().system;

async function leaf(i) {
  return i;
}
async function loop() {
  let s = 0;
  for (let i = 0; i < N; i++) s += await leaf(i);
  return s;
}
(async () => {
  await loop(); // warm up
  const t0 = cpu();
  if (pyroscope) await pyroscope.wrapWithLabels({ route: 'r1' }, loop);
  else await loop();
  process.stdout.write(`${((cpu() - t0) * 1000) / N}\n`);
})();
