'use strict';
// The cost of one heap read: a heap of MIB MiB kept in 1 KiB arrays by 200 functions called
// through chains 2 to 12 deep (thousands of profile nodes), sampled every INTERVAL bytes, then
// read 5 times. `native`: what the package does (V8's GetAllocationProfile through the addon,
// frames named, handed to no agent); `inspector`: node:inspector HeapProfiler.getSamplingProfile
// (which forces a full GC per read). Prints the median milliseconds per read and the live samples.
// Usage: node heap-read.js native|inspector MIB INTERVAL
const how = process.argv[2] || 'native';
const mib = Number(process.argv[3] || 200);
const interval = Number(process.argv[4] || 4096);
const FUNCTIONS = 200;

let read;
if (how === 'native') {
  const native = require('../../bindings/node/lib/native');
  native.heapStart(interval, 64, false);
  read = () => native.heapCollect();
} else {
  const inspector = require('node:inspector');
  const session = new inspector.Session();
  session.connect();
  const post = (method, params) => {
    let out;
    session.post(method, params, (err, res) => {
      if (err) throw err;
      out = res;
    });
    return out;
  };
  post('HeapProfiler.startSampling', { samplingInterval: interval });
  read = () => post('HeapProfiler.getSamplingProfile').profile;
}

const keep = [];
const fns = [];
for (let i = 0; i < FUNCTIONS; i++) {
  // Distinct named functions, each its own profile node.
  // eslint-disable-next-line no-new-func
  fns.push(
    new Function(
      'fns',
      'keep',
      `return function f${i}(n, d) {
        if (d > 0) return fns[(${i} * 7 + d) % ${FUNCTIONS}](n, d - 1);
        for (let k = 0; k < n; k++) { const a = new Array(122); for (let j = 0; j < 122; j++) a[j] = j; keep.push(a); }
      };`,
    )(fns, keep),
  );
}
const arrays = mib * 1024;
const per = 64;
for (let done = 0, i = 0; done < arrays; done += per, i++) fns[i % FUNCTIONS](per, 2 + (i % 11));

const times = [];
let last = null;
for (let i = 0; i < 5; i++) {
  const t0 = process.hrtime.bigint();
  last = read();
  times.push(Number(process.hrtime.bigint() - t0) / 1e6);
}
times.sort((a, b) => a - b);
const samples = how === "native" ? last.samples : last.samples.length;
const nodes = how === "native" ? last.nodes : undefined;
process.stdout.write(`${JSON.stringify({ how, mib, interval, ms: times[2], samples, nodes })}\n`);
